"""The saver's lifecycle policy on an S3 source's bucket (docs/s3-layout.md §7).

`plan()` reads the bucket's lifecycle configuration and says what applying a
policy would change: the saver's rules for the source's prefix (IDs
`s3saver:<prefix>:`) that would be added, changed, removed or left as they
are, and how many rules of other prefixes stay untouched. `apply()` reads
again, puts the configuration and reports the same, so the run page can put
a confirmed run beside its preview. The rules themselves are
checkpoints.s3layout's, the ones S3Saver.apply_lifecycle() puts.

S3 has no conditional write for a lifecycle configuration: a rule another
tool adds between the read and the put of `apply()` (milliseconds) is lost.
Rules added between the preview and the confirmation are not: `apply()`
reads the bucket again and keeps them.
"""

from __future__ import annotations

from checkpoints import s3layout as layout
from checkpoints.sources import SourceError, first_line
from checkpoints.sources.s3.reader import _code  # the S3 error code of a botocore error, as the reader reads it


class S3Lifecycle:
    def __init__(self, url: str, settings, *, client=None):
        from checkpoints.sources.s3.reader import parse_url

        _, self.bucket, self.prefix = parse_url(url)
        self.settings = settings.replace(bucket=self.bucket, prefix=self.prefix)
        self.client = client
        self.where = f"s3://{self.bucket}/{self.prefix}"

    def _client(self):
        if self.client is None:
            from checkpoints.s3client import build_client

            try:
                self.client = build_client(self.settings)
            except Exception as e:  # noqa: BLE001 - botocore's errors name no common base
                raise SourceError(f"cannot open {self.where}: {first_line(e)}") from None
        return self.client

    def _bucket_rules(self) -> list:
        try:
            return self._client().get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except Exception as e:  # noqa: BLE001
            if _code(e) == "NoSuchLifecycleConfiguration":
                return []
            raise SourceError(f"cannot read the lifecycle configuration of bucket {self.bucket}: "
                              f"{_code(e) or first_line(e)}") from None

    def plan(self, policy: dict) -> dict:
        """What applying `policy` (lifecycle_rules' options) would do; changes nothing."""
        rules = self._bucket_rules()
        try:
            configuration = layout.lifecycle_configuration(rules, self.prefix, **policy)
        except (TypeError, ValueError) as e:
            raise SourceError(f"bad lifecycle policy: {e}") from None
        return self._compare(rules, configuration)

    def apply(self, policy: dict) -> dict:
        """Put the configuration that applies `policy`; the same report as plan(), `applied` true."""
        result = self.plan(policy)
        configuration = {"Rules": result.pop("_rules")}
        client = self._client()
        try:
            if configuration["Rules"]:
                client.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration=configuration)
            else:
                client.delete_bucket_lifecycle(Bucket=self.bucket)
        except Exception as e:  # noqa: BLE001
            raise SourceError(f"cannot put the lifecycle configuration of bucket {self.bucket}: "
                              f"{_code(e) or first_line(e)}") from None
        return {**result, "applied": True}

    def _compare(self, rules: list, configuration: dict) -> dict:
        before = {r.get("ID"): r for r in rules if layout.is_saver_rule(r, self.prefix)}
        after = {r["ID"]: r for r in configuration["Rules"] if layout.is_saver_rule(r, self.prefix)}
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "before": list(before.values()),
            "after": list(after.values()),
            "added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(i for i in set(after) & set(before) if not _same_rule(before[i], after[i])),
            "unchanged": sorted(i for i in set(after) & set(before) if _same_rule(before[i], after[i])),
            "other_rules": len(rules) - len(before),
            "applied": False,
            "_rules": configuration["Rules"],
        }


def _same_rule(stored: dict, wanted: dict) -> bool:
    """Whether a rule read back from the bucket is the one we would put (servers add empty fields).

    >>> _same_rule({"ID": "a", "Status": "Enabled", "Filter": {"Prefix": "p/"}, "Expiration": {"Days": 3},
    ...             "NoncurrentVersionTransitions": []}, {"ID": "a", "Status": "Enabled", "Filter": {"Prefix": "p/"},
    ...             "Expiration": {"Days": 3}})
    True
    >>> _same_rule({"ID": "a", "Expiration": {"Days": 3}}, {"ID": "a", "Expiration": {"Days": 4}})
    False
    """
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v not in (None, [], {}, "")}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(stored) == plain(wanted)
