def test_moto_server_speaks_s3_over_http(moto_s3, s3_bucket):
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="uploads/a.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="uploads/a.txt")["Body"].read() == b"hello"
    assert moto_s3.endpoint_url.startswith("http://127.0.0.1:")


def test_seaweed_kept_directory_serves_its_objects_after_a_restart(tmp_path):
    """bench/bench_s3_sync.py --store-dir: a store written once is served again by a new server on
    the same directory (same ports), and the directory outlives stop()."""
    from tests.seaweed import SeaweedS3

    server = SeaweedS3(tmp_path / "store")
    try:
        client = server.client()
        client.create_bucket(Bucket="kept")
        for i in range(3):
            client.put_object(Bucket="kept", Key=f"p/{i}", Body=b"v%d" % i)
        endpoint = server.endpoint_url
    finally:
        server.stop()
    assert (tmp_path / "store" / "ports.json").exists()

    again = SeaweedS3(tmp_path / "store")
    try:
        assert again.endpoint_url == endpoint
        client = again.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="kept")["Contents"]]
        assert keys == ["p/0", "p/1", "p/2"]
        assert client.get_object(Bucket="kept", Key="p/1")["Body"].read() == b"v1"
    finally:
        again.stop()
    assert (tmp_path / "store").is_dir()
