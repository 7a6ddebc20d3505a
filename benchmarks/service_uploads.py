"""Bad uploads against a real ``leukodx serve`` (embedded SQLite, default limits): text named .jpg, a
decompression bomb, a 2 GB file (declared, and streamed without a length), an empty file, truncated
and mislabelled files, path-traversal and unicode names, a contradicting Content-Type. Each must get
the expected status with one clear line (or, for a good image under an odd name, be stored under a
generated name with the name kept as data); nothing may appear outside the data folder, and the
server must keep answering.

Run: ``python benchmarks/service_uploads.py`` (~1 min). Writes results/service_uploads.{json,md}.
"""

from __future__ import annotations

import io
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path

import httpx
from PIL import Image

from _common import write_result
from _service import Service, cell_images, database_checks, prepare, token, uploads_agree

from leukodx.data.root import resolve_data_root

GIB = 2 ** 30


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side px (10 Gpx), a few hundred bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 65536))
            + chunk(b"IEND", b""))


def raw_upload(port: int, auth: dict, case: int, declared: int | None, stream: int) -> dict:
    """A multipart POST on a raw socket: ``declared`` Content-Length (None: chunked), ``stream`` bytes
    of file body sent until the server answers or closes. Returns the status line and bytes sent."""
    boundary = "leukodxbig"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"
    length = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    request = (f"POST /api/cases/{case}/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth['Authorization']}"
               f"\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n{length}\r\n\r\n").encode()
    sent, piece, t0 = 0, b"\x00" * (1 << 20), time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        s.sendall(request)
        try:
            if declared is None:
                s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
                while sent < stream:
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
            else:
                s.sendall(head)
                s.setblocking(False)  # send until the server has answered
                while sent < stream:
                    try:
                        if s.recv(1, socket.MSG_PEEK):
                            break
                    except BlockingIOError:
                        pass
                    s.setblocking(True)
                    s.sendall(piece)
                    sent += len(piece)
                    s.setblocking(False)
        except OSError:
            pass  # the server answered and closed while we were still sending
        s.setblocking(True)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except OSError:
            pass
    status_line = reply.split(b"\r\n", 1)[0].decode(errors="replace")
    body = reply.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    return {"status": int(status_line.split()[1]) if status_line.startswith("HTTP/") else None,
            "message": body.strip(), "bytes_sent": sent, "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="leukodx-uploads-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        url = f"sqlite:///{data_dir / 'leukodx.db'}"
        prepare(data_dir, url)
        service = Service(data_dir, url, "--no-worker").start()
        try:
            auth = token(service.base)
            case = httpx.post(f"{service.base}/api/cases", json={"label": "bad uploads"}, headers=auth).json()["id"]
            jpeg = cell_images(1)[0].read_bytes()
            fcs = next(resolve_data_root().rglob("*.fcs"))
            png = io.BytesIO()
            Image.new("RGB", (64, 64), (200, 120, 150)).save(png, format="PNG")
            cases = [  # name, (filename, bytes, content type), expected status, expected words
                ("text named .jpg", ("notes.jpg", b"patient notes, not an image\n", "image/jpeg"), 422, "not an image"),
                ("decompression bomb (PNG claiming 100,000^2 px)", ("bomb.png", bomb_png(), "image/png"), 422,
                 "decompression bomb"),
                ("zero bytes", ("empty.jpg", b"", "image/jpeg"), 422, "empty file"),
                ("truncated JPEG", ("cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"), 422, "cut.jpg"),
                ("FCS content named .jpg", ("flow.jpg", fcs.read_bytes()[:200_000], "image/jpeg"),
                 422, "content is an FCS file"),
                ("HTML named .csv", ("table.csv", b"<html><body><script>alert(1)</script></body></html>\n", "text/csv"),
                 422, "not an image"),
                ("SVG with script", ("cell.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
                                     "image/svg+xml"), 422, "not an image"),
                ("wrong content-type (JPEG sent as text/html)", ("cell.jpg", jpeg, "text/html"), 422, "sent as text/html"),
                ("path traversal name ../../etc/x.jpg", ("../../etc/x.jpg", jpeg, "image/jpeg"), 201, "x.jpg"),
                ("path traversal name ..\\..\\tmp\\leukodx-evil.png", ("..\\..\\tmp\\leukodx-evil.png", png.getvalue(),
                                                                     "image/png"), 201, "leukodx-evil.png"),
                ("unicode name (good image)", ("Blutausstrich Ünïcödé 血液 🩸.jpg", jpeg, "image/jpeg"), 201,
                 "Blutausstrich Ünïcödé 血液 🩸.jpg"),
                ("unicode name (text)", ("Ünïcödé 血液.jpg", b"just text", "image/jpeg"), 422, "Ünïcödé 血液.jpg"),
            ]
            rows, outcomes = [], []
            for name, upload, want, words in cases:
                r = httpx.post(f"{service.base}/api/cases/{case}/files", headers=auth, files=[("files", upload)], timeout=120)
                body = r.json()
                if r.status_code == 201:
                    message = body["stored"][0]["name"]
                else:
                    detail = body["detail"]
                    message = detail["rejected"][0]["error"] if isinstance(detail, dict) else str(detail)
                alive = httpx.get(f"{service.base}/health").status_code == 200
                ok = r.status_code == want and words in message and "\n" not in message and alive
                outcomes.append({"case": name, "status": r.status_code, "expected": want, "message": message,
                                 "serving_after": alive, "ok": ok})
            for name, declared, stream in (("2 GB file, Content-Length declared", 2 * GIB, 2 * GIB),
                                           ("2 GB file streamed without a length (chunked)", None, 2 * GIB)):
                r = raw_upload(service.port, auth, case, declared, stream)
                alive = httpx.get(f"{service.base}/health").status_code == 200
                ok = r["status"] == 413 and "limit" in r["message"] and alive
                outcomes.append({"case": name, "status": r["status"], "expected": 413, "message": r["message"],
                                 "bytes_sent": r["bytes_sent"], "seconds": r["seconds"], "serving_after": alive, "ok": ok})
        finally:
            service.stop()
        checks = database_checks(url)
        agree = uploads_agree(data_dir, checks.pop("stored_names"))
        outside = [p for p in (Path("/etc/x.jpg"), Path("/tmp/leukodx-evil.png"), data_dir.parent / "x.jpg",
                               Path(tmp) / "etc" / "x.jpg") if p.exists()]
        stray = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*")
                       if p.is_file() and p.parent not in (data_dir, data_dir / "uploads"))
    for o in outcomes:
        rows.append([o["case"], o["status"], o["expected"], o["message"].replace("|", "\\|")[:160]
                     + (f" ({o['bytes_sent'] / 2 ** 20:.0f} MB sent, {o['seconds']} s)" if "bytes_sent" in o else ""),
                     "yes" if o["serving_after"] else "**no**", "yes" if o["ok"] else "**no**"])
    notes = [f"{sum(o['ok'] for o in outcomes)} of {len(outcomes)} handled as expected",
             f"files outside the data folder: {len(outside)} {outside}; other stray files: {stray}",
             f"uploads folder vs database rows: {agree}",
             f"stored: {sum(o['status'] == 201 for o in outcomes)} files, each under a generated name inside the "
             "uploads folder (the user's name is kept only as data)"]
    write_result("service_uploads", {"cases": outcomes, "outside_data_dir": [str(p) for p in outside],
                                     "stray_files": stray, "uploads_vs_database": agree},
                 ["upload", "status", "expected", "message (or stored name)", "serving after", "as expected"], rows, notes)


if __name__ == "__main__":
    main()
