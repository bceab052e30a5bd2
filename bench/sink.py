"""A bare aiohttp server as the HTTP ceiling: it streams each request body to a file on
the given directory, then fsyncs the file, renames it and fsyncs the directory — the least
a durable upload costs, with none of ArtStore's work (no multipart, hashing, metadata).

    python -m bench.sink DIR PORT
"""

import asyncio
import itertools
import os
import sys

from aiohttp import web

_counter = itertools.count()


def make_app(directory: str) -> web.Application:
    async def put(request: web.Request) -> web.Response:
        n = next(_counter)
        tmp = os.path.join(directory, f".{n}.tmp")
        final = os.path.join(directory, f"{n}.bin")
        loop = asyncio.get_running_loop()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if len(chunk) >= 65536:
                    await loop.run_in_executor(None, os.write, fd, chunk)
                else:
                    os.write(fd, chunk)
            await loop.run_in_executor(None, _durable_rename, fd, tmp, final, directory)
        finally:
            os.close(fd)
        return web.json_response({"size": size}, status=201)

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/upload", put)
    return app


def _durable_rename(fd: int, tmp: str, final: str, directory: str) -> None:
    os.fsync(fd)
    os.rename(tmp, final)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


if __name__ == "__main__":
    directory, port = sys.argv[1], int(sys.argv[2])
    os.makedirs(directory, exist_ok=True)
    web.run_app(make_app(directory), host="127.0.0.1", port=port, access_log=None,
                print=None)
