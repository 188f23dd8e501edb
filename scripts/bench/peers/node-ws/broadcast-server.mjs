// Part of wsecho's scripts/bench (copied beside its node_modules in
// BENCH_CACHE): the "Server broadcast" example of ws's README, every message
// to every connected client, the sender too.
// Usage: node broadcast-server.mjs PORT (listens on 127.0.0.1).
import WebSocket, { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});
