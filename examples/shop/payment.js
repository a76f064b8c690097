// The payment service, on 0.0.0.0:3001, with nothing but Node's built-in http module.
//
// GET /api/process-payment   approves and answers {service, task, status, transaction}
// GET /health                200 ok, or 503 while still "warming up"
//
// PAYMENT_START_DELAY=SECONDS (optional, for tests) makes /health answer 503 for that long after
// start. Requests are served all along: it is the health check that keeps traffic away.
"use strict";
const http = require("http");
const crypto = require("crypto");

const TASK = process.env.TETHER_TASK || `pid${process.pid}`;
const readyAt = Date.now() + 1000 * Number(process.env.PAYMENT_START_DELAY || 0);

function reply(res, code, body) {
  const data = typeof body === "string" ? body : JSON.stringify(body) + "\n";
  res.writeHead(code, {
    "content-type": typeof body === "string" ? "text/plain" : "application/json",
    "content-length": Buffer.byteLength(data),
  });
  res.end(data);
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://payment-service").pathname;
  if (path === "/health") {
    if (Date.now() < readyAt) reply(res, 503, "starting\n");
    else reply(res, 200, "ok\n");
  } else if (path === "/api/process-payment" && req.method === "GET") {
    reply(res, 200, {
      service: "payment-service",
      task: TASK,
      status: "approved",
      transaction: "txn-" + crypto.randomBytes(6).toString("hex"),
    });
  } else {
    reply(res, 404, { service: "payment-service", error: `no resource ${req.method} ${path}` });
  }
  console.log(`payment-service ${TASK} ${req.method} ${req.url} ${res.statusCode}`);
});

// Stop promptly: finish what is in flight, close idle keep-alive connections, exit.
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => process.exit(0), 2000).unref();
});

server.listen(3001, "0.0.0.0", () => {
  console.log(`payment-service ${TASK} listening on 0.0.0.0:3001`);
});
