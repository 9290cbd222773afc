"""Local inputs and object storage in the manifest: folders, paths, path rows, uploads:, s3:// outputs.

No server needed: validation reads the files (size from the header, sha256 of the bytes)
and never talks to a bucket.
"""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from conftest import make_image
from pixbatch.cli import cli
from pixbatch.expand import expand
from pixbatch.items import FILE_SCHEME, file_ref, resolve_urls
from pixbatch.manifest import load_manifest

UP = "uploads: {to: s3://my-bucket/in/}\n"
STEP = "steps: [{id: up, op: upscale, upscale_mode: factor, factor: 2}]\n"


def validate(text: str) -> tuple[int, list[str], str]:
    Path("m.yaml").write_text(text)
    r = CliRunner().invoke(cli, ["validate", "m.yaml"])
    return r.exit_code, [ln for ln in r.output.splitlines() if re.match(r"^\S+:\d+:\d+: ", ln)], r.output


def test_a_folder_with_glob_and_recursion_sizes_from_the_files():
    make_image(Path("photos/a.png"), (640, 480))
    make_image(Path("photos/b.jpg"), (320, 200))
    make_image(Path("photos/sub/c.webp"), (300, 300))
    make_image(Path("photos/.hidden/d.png"), (64, 64))
    Path("photos/readme.txt").write_text("not an image, and not matched")
    Path("m.yaml").write_text(f"version: 1\n{UP}inputs:\n  - {{from: photos/, recursive: true}}\n{STEP}")
    m = load_manifest("m.yaml")
    got = [(i.id, i.size, i.file.format) for i in m.iter_inputs()]
    assert got == [("a", (640, 480), "PNG"), ("b", (320, 200), "JPEG"), ("sub_c", (300, 300), "WEBP")]
    only_png = load_manifest({"version": 1, "uploads": {"to": "s3://my-bucket/in/"},
                              "inputs": [{"from": "photos", "glob": "*.png"}],
                              "steps": [{"id": "up", "op": "upscale"}]})
    assert [i.id for i in only_png.iter_inputs()] == ["a"]


def test_the_key_is_the_content_hash_and_the_url_comes_at_send_time():
    make_image(Path("a.png"), (640, 480))
    Path("copy").mkdir()
    Path("copy/a2.png").write_bytes(Path("a.png").read_bytes())
    Path("m.yaml").write_text(f"version: 1\n{UP}inputs: [a.png, {{path: copy/a2.png, id: twin}}]\n{STEP}")
    items = list(expand(load_manifest("m.yaml")))
    assert items[0].key == items[1].key  # identical bytes: one request
    assert items[0].body["image"].startswith(FILE_SCHEME) and items[0].input_size == (640, 480)
    sha = items[0].body["image"][len(FILE_SCHEME):]
    sent = resolve_urls(items[0].body, {}, lambda s: f"https://b.example/{s}?X-Amz-Signature=1")
    assert sent["image"] == f"https://b.example/{sha}?X-Amz-Signature=1" and items[0].body["image"] == file_ref(sha)


def test_rows_of_a_csv_and_a_text_file_can_be_paths():
    make_image(Path("imgs/a.png"), (64, 48))
    make_image(Path("imgs/b.jpg"), (80, 60))
    Path("list.csv").write_text("path,id,sku\nimgs/a.png,,S1\n,remote,S2\nimgs/b.jpg,bee,S3\n")
    Path("list.txt").write_text("# local and remote\nimgs/b.jpg\nhttps://cdn.example.com/x.png\n")
    code, problems, out = validate(f"version: 1\n{UP}inputs: [{{from: list.csv}}]\n{STEP}")
    assert code == 2
    assert problems == ["list.csv:3:1: row 3, column path: the path cell is empty "
                        "(every row needs the path of a local image file)"]
    Path("list.csv").write_text("path,id,sku\nimgs/a.png,,S1\nimgs/b.jpg,bee,S3\n")
    Path("m.yaml").write_text(f"version: 1\n{UP}inputs: [{{from: list.csv}}, {{from: list.txt}}]\n"
                              "steps: [{id: up, op: upscale, naming: '{input}-{index}.{ext}'}]\n")
    inputs = list(load_manifest("m.yaml").iter_inputs())
    assert [(i.id, i.size, dict(i.vars)) for i in inputs[:2]] == [("a", (64, 48), {"sku": "S1"}),
                                                                  ("bee", (80, 60), {"sku": "S3"})]
    assert inputs[2].file is not None and inputs[3].file is None and inputs[3].url.startswith("https://")


def test_missing_files_and_non_images_are_located_problems():
    make_image(Path("photos/ok.png"), (64, 64))
    Path("photos/notes.jpg").write_text("hello")  # an image by its name only
    make_image(Path("anim.png"), (8, 8))
    Image.new("RGB", (8, 8)).save("anim.gif")
    Path("rows.txt").write_text("photos/ok.png\nphotos/gone.png\n")
    code, problems, out = validate(f"version: 1\n{UP}inputs:\n  - {{from: photos/}}\n  - missing.png\n"
                                   "  - {path: anim.gif, id: anim}\n  - cdn.example.com/a.png\n  - {from: rows.txt}\n"
                                   f"  - {{from: empty/}}\n{STEP}")
    assert code == 2
    assert problems[:3] == [
        "m.yaml:5:5: $.inputs[1]: the file missing.png does not exist "
        "(check the path (relative paths are relative to the file that names them))",
        "m.yaml:6:12: $.inputs[2].path: anim.gif is a GIF image; the gateway takes JPEG, PNG and WebP "
        "(convert it to JPEG, PNG or WebP, or leave it out)",
        "m.yaml:7:5: $.inputs[3]: 'cdn.example.com/a.png' is neither an http:// or https:// URL nor an existing file "
        "(start a URL with https://; a local path is relative to the manifest's directory)",
    ]
    assert "m.yaml:9:12: $.inputs[5].from: the folder empty does not exist (the path is relative to the manifest's directory)" in problems
    assert ("photos:1:1: file notes.jpg: photos/notes.jpg is not an image Pillow can read "
            "(remove it from the inputs, or narrow the folder's glob)") in problems
    assert ("rows.txt:2:1: line 2: the file photos/gone.png does not exist "
            "(check the path (relative paths are relative to the file that names them))") in problems
    assert any("duplicate input id 'ok'" in p for p in problems)  # the folder's and the text file's ok.png


def test_uploads_and_s3_output_dir_are_checked():
    make_image(Path("a.png"), (64, 64))
    code, problems, _ = validate(f"version: 1\ninputs: [a.png]\n{STEP}")
    assert problems == ["m.yaml:2:9: $.inputs: local files are inputs, but the manifest has no uploads: section "
                        "(the gateway reads images from URLs: add uploads: {to: s3://bucket/prefix/} "
                        "(see docs/manifest.md, Local files))"]
    code, problems, _ = validate(
        "version: 1\noutput_dir: s3://Bad_Bucket/x\n"
        "uploads: {to: s3://ok-bucket/in, expires: 8d, public_base_url: 'https://cdn.example.com', colour: 1}\n"
        f"inputs: [a.png]\n{STEP}")
    assert code == 2
    text = "\n".join(problems)
    assert "$.uploads.colour: unknown key 'colour'" in text
    assert "$.output_dir: output_dir: 'Bad_Bucket' is not a valid bucket name" in text
    assert "$.uploads.expires: 8d is longer than 7 days, the longest a presigned URL can live" in text
    assert "$.uploads.public_base_url: public_base_url is set but url is presigned" in text
    code, _, out = validate(f"version: 1\noutput_dir: s3://out-bucket/run/\n{UP}inputs: [a.png]\n{STEP}")
    assert code == 0, out
    m = load_manifest("m.yaml")
    assert m.output_uri == "s3://out-bucket/run/" and m.uploads.to.uri == "s3://my-bucket/in/"
    assert m.uploads.expires == 7 * 86400 and m.uploads.url == "presigned"


def test_init_writes_a_commented_manifest_that_validates():
    for i, ext in enumerate(["png", "jpg", "webp"]):
        make_image(Path(f"shots/s{i}.{ext}"), (64 + i, 48))
    r = CliRunner().invoke(cli, ["init", "shots", "-o", "work/spring.yaml"])
    assert r.exit_code == 0, r.output
    text = Path("work/spring.yaml").read_text()
    assert "from: ../shots/" in text and "uploads:" in text and "# - id: edit" in text
    assert sum(1 for ln in text.splitlines() if "#" in ln) > 20  # every field explained
    r = CliRunner().invoke(cli, ["validate", "work/spring.yaml"])
    assert r.exit_code == 0 and "3 inputs, 1 steps, 3 work items" in r.output, r.output
    assert CliRunner().invoke(cli, ["init", "shots", "-o", "work/spring.yaml"]).exit_code == 2  # no overwrite
    Path("urls.csv").write_text("url,id,sku\nhttps://cdn.example.com/1.png,one,S1\n")
    assert CliRunner().invoke(cli, ["init", "urls.csv"]).exit_code == 0
    text = Path("manifest.yaml").read_text()
    assert "uploads:" not in text  # URLs need no bucket
    assert CliRunner().invoke(cli, ["validate", "manifest.yaml"]).exit_code == 0


def test_estimate_prices_local_files_exactly_and_says_what_would_be_uploaded():
    import json

    make_image(Path("photos/a.png"), (1000, 1000))
    make_image(Path("photos/b.jpg"), (1500, 1500))
    Path("photos/twin.png").write_bytes(Path("photos/a.png").read_bytes())  # the same bytes: one upload
    Path("m.yaml").write_text(f"version: 1\n{UP}inputs: [{{from: photos/}}]\n{STEP}")
    r = CliRunner().invoke(cli, ["estimate", "m.yaml", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    a_bytes, b_bytes = Path("photos/a.png").stat().st_size, Path("photos/b.jpg").stat().st_size
    assert data["uploads"] == {"to": "s3://my-bucket/in/", "files": 2, "bytes": a_bytes + b_bytes,
                               "already_uploaded": 0, "already_uploaded_bytes": 0, "to_upload": 2,
                               "to_upload_bytes": a_bytes + b_bytes}
    # factor 2 on 1 MP (4 MP out) and 2.25 MP (8 MP out, capped): priced exactly from the files' sizes, no probe
    assert data["total"]["exact"] and data["sizes"]["probed"] == 0
    assert data["total"]["high"]["micros"] == 5_000 + 10_000
    r = CliRunner().invoke(cli, ["estimate", "m.yaml"])
    assert f"Uploads: 2 local file(s), {a_bytes + b_bytes:,} bytes, to s3://my-bucket/in/" in r.output


def test_presigned_urls_are_signed_at_send_time_and_again_after_half_their_life(monkeypatch):
    from pixbatch.storage import uploads as up_mod
    from pixbatch.storage.config import S3Location, UploadsConfig

    class FakeS3:
        signed = 0

        def presign(self, bucket, key, expires):
            FakeS3.signed += 1
            return f"https://{bucket}.example/{key}?X-Amz-Expires={expires}&n={FakeS3.signed}"

        def public_url(self, bucket, key, base):
            return f"{base}/{key}"

    now = [1000.0]
    monkeypatch.setattr(up_mod.time, "monotonic", lambda: now[0])
    u = up_mod.Uploader(UploadsConfig(S3Location("b-bucket", "in/"), expires=3600), FakeS3())
    u.keys["ab" * 32] = "in/" + "ab" * 32 + ".png"
    first = u.url_for("ab" * 32)
    assert u.url_for("ab" * 32) == first  # fresh: reused
    now[0] += 1801
    assert u.url_for("ab" * 32) != first and FakeS3.signed == 2  # past half its life: signed again
    pub = up_mod.Uploader(UploadsConfig(S3Location("b-bucket", "in/"), url="public",
                                        public_base_url="https://cdn.example.com"), FakeS3())
    pub.keys["cd" * 32] = "in/x.png"
    assert pub.url_for("cd" * 32) == "https://cdn.example.com/in/x.png"
