"""plotly.js comes from the installed plotly package, through the staticfiles machinery."""

import os

import plotly
import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command

from dashboard.staticfinders import PLOTLY_JS, PlotlyFinder
from tests.mirror_data import make_user, static_settings  # noqa: F401

PACKAGED = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")


def test_finder_serves_the_packaged_plotly():
    finder = PlotlyFinder()
    assert finder.check() == []
    assert finder.find(PLOTLY_JS) == PACKAGED
    assert finder.find(PLOTLY_JS, find_all=True) == [PACKAGED]
    assert finder.find("js/other.js") == [] and finder.find("plotly.min.js") == []
    assert finders.find(PLOTLY_JS) == PACKAGED
    assert finders.find("js/charts.js").endswith("static/js/charts.js")
    assert not os.path.exists(os.path.join(os.path.dirname(finders.find("js/charts.js")), "plotly.min.js")), (
        "plotly.min.js must not be committed: it is served from the plotly package"
    )


@pytest.mark.django_db
def test_collectstatic_with_the_manifest_storage_includes_plotly(settings, tmp_path, client):
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", "--noinput", verbosity=0)
    collected = os.listdir(tmp_path / "js")
    hashed = [n for n in collected if n.startswith("plotly.min.") and n.endswith(".js") and n != "plotly.min.js"]
    assert len(hashed) == 1 and f"{hashed[0]}.gz" in collected
    assert (tmp_path / "js" / hashed[0]).read_bytes() == open(PACKAGED, "rb").read()
    from django.templatetags.static import static

    assert static(PLOTLY_JS) == f"/static/js/{hashed[0]}"


def _production_static(settings, static_root):
    """DEBUG off and the static storage dashboard.settings configures, collected into static_root or not."""
    from dashboard import settings as production

    settings.DEBUG = False
    settings.STATIC_ROOT = static_root
    settings.STORAGES = {**settings.STORAGES, "staticfiles": production.STORAGES["staticfiles"]}
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = False
    assert "Manifest" in production.STORAGES["staticfiles"]["BACKEND"]


@pytest.mark.django_db
def test_pages_work_without_collectstatic_with_debug_off(settings, tmp_path, client):
    _production_static(settings, tmp_path / "never-collected")
    login = client.get("/accounts/login/")
    assert login.status_code == 200
    assert 'href="/static/css/console.css"' in login.content.decode()
    css = client.get("/static/css/console.css")
    assert css.status_code == 200 and b"".join(css.streaming_content)
    plotly_js = client.get(f"/static/{PLOTLY_JS}")
    assert plotly_js.status_code == 200

    client.force_login(make_user("viewer", "viewer"))
    for url in ("/", "/threads/", "/maintenance/"):
        assert client.get(url).status_code == 200, url


@pytest.mark.django_db
def test_after_collectstatic_pages_link_hashed_names(settings, tmp_path, client):
    _production_static(settings, tmp_path)
    call_command("collectstatic", "--noinput", verbosity=0)
    from django.templatetags.static import static

    hashed = static("css/console.css")
    assert hashed != "/static/css/console.css" and hashed.startswith("/static/css/console.")
    assert hashed in client.get("/accounts/login/").content.decode()
    # A file added after the last collectstatic still links, by its plain name.
    assert static("css/not-collected-yet.css") == "/static/css/not-collected-yet.css"
