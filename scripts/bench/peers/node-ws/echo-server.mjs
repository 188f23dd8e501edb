// Part of wsecho's scripts/bench (copied beside its node_modules in
// BENCH_CACHE): the server of ws's README, echoing every message to its
// sender, text as text and binary as binary.
// Usage: node echo-server.mjs PORT (listens on 127.0.0.1).
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    ws.send(data, { binary: isBinary });
  });
});
