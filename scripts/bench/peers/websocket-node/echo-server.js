// Part of wsecho's scripts/bench (copied beside its node_modules in
// BENCH_CACHE): the server example of WebSocket-Node's README without its
// logging, accepting a client that asks for no subprotocol (the README's
// accepts only 'echo-protocol'). Echoes text as text and binary as binary.
// Usage: node echo-server.js PORT (on 127.0.0.1).
var WebSocketServer = require('websocket').server;
var http = require('http');

var server = http.createServer(function (request, response) {
  response.writeHead(404);
  response.end();
});
server.listen(Number(process.argv[2]), '127.0.0.1');

var wsServer = new WebSocketServer({ httpServer: server, autoAcceptConnections: false });

wsServer.on('request', function (request) {
  var connection = request.accept(null, request.origin);
  connection.on('message', function (message) {
    if (message.type === 'utf8') {
      connection.sendUTF(message.utf8Data);
    } else if (message.type === 'binary') {
      connection.sendBytes(message.binaryData);
    }
  });
});
