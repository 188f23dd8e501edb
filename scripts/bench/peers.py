"""The other servers of --compare ("peers"): preparing them and starting them.

Each is built or installed into BENCH_CACHE, outside the repository, from the
sources in scripts/bench/peers/ (delete its folder in the cache to get a
newer version):

  tt, tung   tokio-tungstenite's echo-server example and tungstenite's server
             example, from the published crates (peers/rust/Cargo.toml), built
             unchanged into BENCH_CACHE/compare
  node       Node ws's README echo server (peers/node-ws/echo-server.mjs)
  nodebc     Node ws's README "Server broadcast" (peers/node-ws/broadcast-server.mjs)
  wsnode     WebSocket-Node's README echo server (peers/websocket-node/echo-server.js)
  websocat   websocat's broadcast:mirror:, from PATH, WEBSOCAT or cargo install

The Node servers are copied into BENCH_CACHE/node/ws and .../websocket beside
the node_modules npm installs there. A peer that cannot be had is named in
one line (`notes`, shown in results.md) and its rows are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .report import first_error
from .servers import Server, Servers, free_port, port_in_use, say

HERE = Path(__file__).resolve().parent / "peers"
RUST_VERSION = "0.30.0"  # tokio-tungstenite's and tungstenite's, as in peers/rust/Cargo.toml
WEBSOCAT_VERSION = "1.14.1"
TUNGSTENITE_PORT = 3012  # tungstenite's example hard-codes 127.0.0.1:3012

# The labels of the peers' rows until their versions are known.
LABELS = {
    "tt": "tokio-tungstenite example", "tung": "tungstenite example",
    "node": "Node ws", "nodebc": "Node ws broadcast", "wsnode": "WebSocket-Node",
    "websocat": "websocat",
}


@dataclass
class Peer:
    """A peer that can run: its label, what results.md says it is, and its
    command line for a port."""

    name: str
    label: str
    about: str
    command: Callable[[int], list]
    port: int | None = None  # a port of its own choosing, when it has one


class Peers:
    """The peers of one run: those ready to start, and notes on those that are not."""

    def __init__(self, cache: Path, out: Path):
        self.cache = cache
        self.out = out
        self.ready: dict[str, Peer] = {}
        self.notes: list[str] = []  # "NAMES: why", one per peer that cannot run
        self.node = os.environ.get("NODE") or "node"

    def label(self, name: str) -> str:
        peer = self.ready.get(name)
        return peer.label if peer else LABELS.get(name, name)

    def command_line(self, name: str) -> str:
        """Peer NAME's command line as results.md shows it: programs and files by
        their names alone (they live in BENCH_CACHE), the port as PORT."""
        def shown(word: str) -> str:
            if word == "0":
                return "PORT"
            if word.endswith(":0"):
                return word.removesuffix("0") + "PORT"
            return os.path.basename(word) if "/" in word else word

        peer = self.ready[name]
        return " ".join(shown(str(w)) for w in peer.command(0))

    def skip(self, names: str, why: str) -> None:
        """One line about a peer that cannot run; its rows are left out."""
        say(f"--compare: {names}: {why}; going on without its rows")
        self.notes.append(f"{names}: {why}")

    def prepare(self, rust: bool, node: bool, websocat: bool) -> None:
        """Builds or installs the peers the chosen groups need."""
        if rust:
            self.prepare_rust()
        if node:
            self.prepare_node()
        if websocat:
            self.prepare_websocat()

    # ------------------------------------------------------------- rust --
    def prepare_rust(self) -> None:
        """tokio-tungstenite's echo-server and tungstenite's server examples."""
        cmp = self.cache / "compare"
        log = self.out / "compare-build.log"
        names = "tokio-tungstenite, tungstenite"
        say(f"building the tokio-tungstenite and tungstenite examples in {cmp}")
        (cmp / "src" / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "rust" / "Cargo.toml", cmp / "Cargo.toml")
        # An empty library target lets cargo resolve and download the crates
        # before the examples are copied in as binaries.
        shutil.copyfile(HERE / "rust" / "src" / "lib.rs", cmp / "src" / "lib.rs")
        # The examples build into the cache whatever CARGO_TARGET_DIR says.
        env = {**os.environ, "CARGO_TARGET_DIR": str(cmp / "target")}
        with open(log, "wb") as out, open(cmp / "metadata.json", "wb") as metadata:
            fetched = (
                subprocess.run(["cargo", "fetch", "--quiet"], cwd=cmp, env=env,
                               stdout=out, stderr=out, check=False).returncode == 0
                and subprocess.run(["cargo", "metadata", "--format-version", "1"], cwd=cmp, env=env,
                                   stdout=metadata, stderr=out, check=False).returncode == 0
            )
        if not fetched:
            self.skip(names, f"could not fetch the crates ({first_error(log)})")
            return
        sources = {p["name"]: Path(p["manifest_path"]).parent
                   for p in json.loads((cmp / "metadata.json").read_text())["packages"]
                   if p["version"] == RUST_VERSION}
        examples = {
            "tokio-tungstenite-echo.rs": sources.get("tokio-tungstenite", cmp / "?") / "examples" / "echo-server.rs",
            "tungstenite-server.rs": sources.get("tungstenite", cmp / "?") / "examples" / "server.rs",
        }
        if not all(path.is_file() for path in examples.values()):
            self.skip(names, "the examples are not in the downloaded crate sources")
            return
        for name, path in examples.items():
            shutil.copyfile(path, cmp / "src" / "bin" / name)
        with open(log, "ab") as out:
            built = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=cmp, env=env,
                                   stdout=out, stderr=out, check=False).returncode == 0
        if not built:
            self.skip(names, f"the build failed ({first_error(log)}; target/bench/compare-build.log)")
            return
        release = cmp / "target" / "release"
        self.ready["tt"] = Peer(
            "tt", LABELS["tt"],
            f"tokio-tungstenite {RUST_VERSION}'s examples/echo-server.rs (tokio, a task per connection), "
            "built unchanged",
            lambda port: [release / "tokio-tungstenite-echo", f"127.0.0.1:{port}"])
        self.ready["tung"] = Peer(
            "tung", LABELS["tung"],
            f"tungstenite {RUST_VERSION}'s examples/server.rs (a thread per connection, std's default 2 MiB stacks), "
            f"built unchanged; it listens on 127.0.0.1:{TUNGSTENITE_PORT}",
            lambda port: [release / "tungstenite-server"], port=TUNGSTENITE_PORT)

    # ------------------------------------------------------------- node --
    def npm_package(self, source: Path, dest: Path) -> tuple[bool, str]:
        """Installs the package that SOURCE/package.json names into DEST (once, or
        again when that file changed) and copies the servers beside it; returns
        (True, its version) or (False, why not)."""
        wanted = (source / "package.json").read_text()
        name, version_range = next(iter(json.loads(wanted)["dependencies"].items()))
        log = self.out / f"npm-{name}.log"
        dest.mkdir(parents=True, exist_ok=True)
        installed = dest / "package.json"
        if (not installed.is_file() or installed.read_text() != wanted
                or not (dest / "node_modules" / name / "package.json").is_file()):
            installed.write_text(wanted)
            shutil.rmtree(dest / "node_modules", ignore_errors=True)
            (dest / "package-lock.json").unlink(missing_ok=True)
            say(f"installing the npm package {name}@{version_range} into {dest} (once)")
            with open(log, "wb") as out:
                if subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev",
                                   "--loglevel=error"], cwd=dest, stdout=out, stderr=out, check=False).returncode:
                    return False, f"npm install {name}@{version_range} failed ({first_error(log)})"
        asked = subprocess.run([self.node, "-p", f"require('{name}/package.json').version"],
                               cwd=dest, capture_output=True, text=True, check=False)
        if asked.returncode:
            return False, asked.stderr.strip().splitlines()[-1] if asked.stderr.strip() else ""
        for server in source.iterdir():
            if server.name != "package.json":
                shutil.copyfile(server, dest / server.name)
        return True, asked.stdout.strip()

    def prepare_node(self) -> None:
        """Node ws (echo, broadcast) and WebSocket-Node (echo)."""
        if not shutil.which(self.node):
            self.skip("Node ws, WebSocket-Node", "no node (install Node.js, or set NODE)")
            return
        if not shutil.which("npm"):
            self.skip("Node ws, WebSocket-Node", "no npm to install their packages with")
            return
        node = self.node
        node_version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        ws_dir, websocket_dir = self.cache / "node" / "ws", self.cache / "node" / "websocket"
        ok, version = self.npm_package(HERE / "node-ws", ws_dir)
        if ok:
            # ws's README: its "Simple server", sending back what it receives the
            # way its broadcast examples send it on; and "Server broadcast".
            self.ready["node"] = Peer(
                "node", f"Node ws {version}",
                f"npm package ws {version} on Node {node_version} (without the optional native add-ons), "
                "the echo server of its README",
                lambda port: [node, ws_dir / "echo-server.mjs", port])
            self.ready["nodebc"] = Peer(
                "nodebc", f"Node ws {version}",
                f"for the fan-out and wide rows, the same ws {version} with its README's \"Server broadcast\" "
                "example (every message to every client, the sender too)",
                lambda port: [node, ws_dir / "broadcast-server.mjs", port])
        else:
            self.skip("Node ws", version)
        ok, version = self.npm_package(HERE / "websocket-node", websocket_dir)
        if ok:
            self.ready["wsnode"] = Peer(
                "wsnode", f"WebSocket-Node {version}",
                f"npm package websocket {version} (WebSocket-Node, the tutorial's library) on Node {node_version}, "
                "its README's echo server without the logging",
                lambda port: [node, websocket_dir / "echo-server.js", port])
        else:
            self.skip("WebSocket-Node", version)

    # --------------------------------------------------------- websocat --
    def prepare_websocat(self) -> None:
        """websocat's broadcast:mirror: for the fan-out rows."""
        bin_ = os.environ.get("WEBSOCAT", "")
        if bin_:
            if not shutil.which(bin_):
                self.skip("websocat", f"WEBSOCAT={bin_} is not a program")
                return
        elif shutil.which("websocat"):
            bin_ = "websocat"
        else:
            root = self.cache / "websocat"
            bin_ = str(root / "bin" / "websocat")
            if not os.access(bin_, os.X_OK):
                log = self.out / "websocat-build.log"
                say(f"building websocat {WEBSOCAT_VERSION} into {root} (a few minutes, once)")
                # Without CARGO_TARGET_DIR cargo install builds in a temporary folder of its own.
                env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
                with open(log, "wb") as out:
                    if subprocess.run(["cargo", "install", "--locked", "--quiet", "--root", root, "websocat",
                                       "--version", WEBSOCAT_VERSION], env=env, stdout=out, stderr=out,
                                      check=False).returncode:
                        self.skip("websocat", f"cargo install websocat failed ({first_error(log)}; "
                                  "target/bench/websocat-build.log)")
                        return
        try:
            words = subprocess.run([bin_, "--version"], capture_output=True, text=True, check=False).stdout.split()
        except OSError:
            words = []
        version = words[1] if len(words) > 1 else "?"
        # The README's broadcast example is `websocat -t ws-l:… broadcast:mirror:`,
        # for people typing text: -t (text, also the default) sends every message
        # on as a text frame, replacing what is not UTF-8, and wsload, whose
        # messages are binary, counts no text frame as its own (0 listeners synced).
        # -E is websocat's own advice: its broadcast: overlay's example is
        # `websocat -E ws-l:… reuse-broadcast:mirror:`, and without -E it warns
        # that serving several clients may leak sockets.
        self.ready["websocat"] = Peer(
            "websocat", f"websocat {version}",
            f"websocat {version} as `websocat -b -E ws-l:127.0.0.1:PORT broadcast:mirror:` "
            "(every message to every client, the sender too): the example of its broadcast: overlay's help, "
            "`-E ws-l:… reuse-broadcast:mirror:` (-E, without which websocat warns that serving several "
            "clients may leak sockets), with -b, binary messages: in its default text mode (the README's "
            "chat example, `-t`) it sends every message on as text, replacing what is not UTF-8, which "
            "wsload's binary messages are not",
            lambda port: [bin_, "-b", "-E", f"ws-l:127.0.0.1:{port}", "broadcast:mirror:"])

    # ------------------------------------------------------------ start --
    def start(self, servers: Servers, name: str) -> Server | None:
        """Starts peer NAME on 127.0.0.1; None when it did not come up."""
        peer = self.ready[name]
        if peer.port is not None:
            if port_in_use(peer.port):
                say(f"port {peer.port} is taken: skipping a run of tungstenite's server example")
                return None
            port = peer.port
        else:
            port = free_port()
        return servers.start_command(peer.label, port, peer.command(port))
