def test_moto_server_speaks_s3_over_http(moto_s3, s3_bucket):
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="uploads/a.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="uploads/a.txt")["Body"].read() == b"hello"
    assert moto_s3.endpoint_url.startswith("http://127.0.0.1:")
