"""Serve plotly.js from the installed plotly package, never from a CDN.

The python `plotly` package ships the matching plotly.min.js as package
data. This finder exposes it as `js/plotly.min.js`, so `collectstatic` (and
WhiteNoise with WHITENOISE_USE_FINDERS) pick it up without a copy in the
repository, and the JavaScript always matches the figures python builds.
"""

import os

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

PLOTLY_JS = "js/plotly.min.js"


def plotly_package_data() -> str:
    import plotly

    return os.path.join(os.path.dirname(plotly.__file__), "package_data")


class PlotlyFinder(BaseFinder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=plotly_package_data())
        # collectstatic and WhiteNoise put a storage's files under its prefix.
        self.storage.prefix = os.path.dirname(PLOTLY_JS)

    def check(self, **kwargs):
        if not self.storage.exists(os.path.basename(PLOTLY_JS)):
            return [Error(f"plotly.min.js is missing from {self.storage.location}", id="dashboard.E001")]
        return []

    def find(self, path, find_all=False, **kwargs):
        if kwargs:  # Django 5.2 still accepts the deprecated `all=`
            find_all = self._check_deprecated_find_param(find_all=find_all, **kwargs)
        if path != PLOTLY_JS:
            return []  # Django's finders answer "no match" with an empty list either way
        match = self.storage.path(os.path.basename(PLOTLY_JS))
        return [match] if find_all else match

    def list(self, ignore_patterns):
        yield os.path.basename(PLOTLY_JS), self.storage
