"""Static files: a request cut short never leaves its file open."""

from __future__ import annotations

import pytest
from hyperhive_web.app import ClosingFileBody, DashboardApp


async def test_a_static_file_whose_opening_fails_after_the_open_is_closed(tmp_path):
    assert DashboardApp.response_class.file_body_class is ClosingFileBody  # every static file, plugins' too
    path = tmp_path / "icon.svg"
    path.write_bytes(b"<svg/>")
    body = ClosingFileBody(path)
    body.begin = -1  # the seek after the open fails, as a request cancelled there does
    with pytest.raises((ValueError, OSError)):
        async with body:
            pass
    assert body.file is not None
    assert body.file.closed
