"""Static files storage that works before `collectstatic` has run.

With DEBUG off, Django's manifest storage raises "Missing staticfiles manifest
entry" for every `{% static %}` tag until `collectstatic` has written the
manifest, so a fresh checkout deployed per the README served a 500 login page.
Here a name the manifest does not know is linked by its plain name, which
WhiteNoise serves from the finders (WHITENOISE_USE_FINDERS); once
`collectstatic` has run, names get their hashed, long-cached URLs as before.
"""

from urllib.parse import unquote, urlsplit

from whitenoise.storage import CompressedManifestStaticFilesStorage


class FallbackManifestStaticFilesStorage(CompressedManifestStaticFilesStorage):
    manifest_strict = False

    def stored_name(self, name):
        if self.hash_key(urlsplit(unquote(name)).path.strip()) not in self.hashed_files:
            return name
        return super().stored_name(name)
