"""Read a bucket's versioning, lifecycle and encryption as plain facts and warnings.

Pure functions over the dicts boto3 returns, so the bucket panel's wording
can be checked without a server.
"""


def rule_prefix(rule: dict) -> str:
    """The key prefix a lifecycle rule applies to ('' for the whole bucket).

    >>> rule_prefix({"Filter": {"Prefix": "uploads/"}}), rule_prefix({"Prefix": "old/"}), rule_prefix({"Filter": {}})
    ('uploads/', 'old/', '')
    >>> rule_prefix({"Filter": {"And": {"Prefix": "tmp/", "Tags": [{"Key": "a", "Value": "b"}]}}})
    'tmp/'
    """
    filt = rule.get("Filter") or {}
    if "And" in filt:
        return filt["And"].get("Prefix", "") or ""
    if "Prefix" in filt:
        return filt["Prefix"] or ""
    return rule.get("Prefix", "") or ""


def rule_has_tag_filter(rule: dict) -> bool:
    filt = rule.get("Filter") or {}
    return "Tag" in filt or bool((filt.get("And") or {}).get("Tags"))


def describe_rule(rule: dict) -> dict:
    """A lifecycle rule as the panel shows it.

    >>> d = describe_rule({"ID": "tidy", "Status": "Enabled", "Filter": {"Prefix": "uploads/"},
    ...     "Expiration": {"Days": 30}, "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
    ...     "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}})
    >>> d["id"], d["enabled"], d["prefix"]
    ('tidy', True, 'uploads/')
    >>> d["actions"]
    ['expire current versions after 30 days', 'expire noncurrent versions after 7 days', 'abort incomplete multipart uploads after 2 days']
    """
    actions = []
    exp = rule.get("Expiration") or {}
    if "Days" in exp:
        actions.append(f"expire current versions after {exp['Days']} days")
    if "Date" in exp:
        actions.append(f"expire current versions on {exp['Date']:%Y-%m-%d}" if hasattr(exp["Date"], "strftime") else f"expire current versions on {exp['Date']}")
    if exp.get("ExpiredObjectDeleteMarker"):
        actions.append("remove expired delete markers")
    nce = rule.get("NoncurrentVersionExpiration") or {}
    if "NoncurrentDays" in nce:
        keep = f", keeping {nce['NewerNoncurrentVersions']} newer" if nce.get("NewerNoncurrentVersions") else ""
        actions.append(f"expire noncurrent versions after {nce['NoncurrentDays']} days{keep}")
    for t in rule.get("Transitions") or ():
        when = f"after {t['Days']} days" if "Days" in t else f"on {t.get('Date')}"
        actions.append(f"move to {t.get('StorageClass', '?')} {when}")
    for t in rule.get("NoncurrentVersionTransitions") or ():
        actions.append(f"move noncurrent versions to {t.get('StorageClass', '?')} after {t.get('NoncurrentDays', '?')} days")
    abort = rule.get("AbortIncompleteMultipartUpload") or {}
    if "DaysAfterInitiation" in abort:
        actions.append(f"abort incomplete multipart uploads after {abort['DaysAfterInitiation']} days")
    return {
        "id": rule.get("ID") or "(no id)",
        "enabled": rule.get("Status") == "Enabled",
        "prefix": rule_prefix(rule),
        "tags": rule_has_tag_filter(rule),
        "actions": actions or ["(no action)"],
    }


def covers(rule: dict, prefix: str) -> bool:
    """Whether an enabled rule applies to every key under `prefix`.

    >>> covers({"Status": "Enabled", "Filter": {"Prefix": "up"}}, "uploads/")
    True
    >>> covers({"Status": "Enabled", "Filter": {"Prefix": "other/"}}, "uploads/")
    False
    >>> covers({"Status": "Disabled", "Filter": {}}, "uploads/")
    False
    """
    return rule.get("Status") == "Enabled" and not rule_has_tag_filter(rule) and prefix.startswith(rule_prefix(rule))


def warnings_for(config: dict, prefix: str) -> list[str]:
    """What the operator should fix.

    >>> warnings_for({"versioning": "", "rules": []}, "uploads/")[0]
    'No enabled lifecycle rule aborts incomplete multipart uploads under uploads/: the parts of failed uploads stay (and are billed) until someone deletes them.'
    >>> ok = {"Status": "Enabled", "Filter": {}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    >>> warnings_for({"versioning": "", "rules": [ok]}, "uploads/")
    []
    >>> len(warnings_for({"versioning": "Enabled", "rules": [ok]}, ""))
    1
    """
    where = f"under {prefix}" if prefix else "in the bucket"
    rules = config.get("rules") or []
    out = []
    if not any(covers(r, prefix) and (r.get("AbortIncompleteMultipartUpload") or {}) for r in rules):
        out.append(
            f"No enabled lifecycle rule aborts incomplete multipart uploads {where}: the parts of failed "
            "uploads stay (and are billed) until someone deletes them."
        )
    if config.get("versioning") in ("Enabled", "Suspended") and not any(
        covers(r, prefix) and (r.get("NoncurrentVersionExpiration") or {}) for r in rules
    ):
        out.append(
            f"Versioning is {config['versioning'].lower()} and no enabled rule expires noncurrent versions {where}: "
            "deleted and swept objects keep their space until their old versions are removed."
        )
    return out


def describe_encryption(rules: list) -> list[str]:
    """Default encryption rules in words.

    >>> describe_encryption([{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "k1"}, "BucketKeyEnabled": True}])
    ['aws:kms with key k1, bucket key enabled']
    >>> describe_encryption([])
    []
    """
    out = []
    for rule in rules:
        default = rule.get("ApplyServerSideEncryptionByDefault") or {}
        text = default.get("SSEAlgorithm", "unknown algorithm")
        if default.get("KMSMasterKeyID"):
            text += f" with key {default['KMSMasterKeyID']}"
        if rule.get("BucketKeyEnabled"):
            text += ", bucket key enabled"
        out.append(text)
    return out
