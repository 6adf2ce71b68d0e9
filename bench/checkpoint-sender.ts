// Child process of the transfer benchmark: serves the checkpoint in <checkpoints dir> on
// 127.0.0.1 the way a peer would (its own process, so sender and receiver each get a core), and
// writes the port it listens on to <port file>.

import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { pino } from "pino";
import { WebSocketServer } from "ws";
import { CheckpointStore } from "../node/src/checkpoint/checkpoint-store.js";
import { CHECKPOINT_PATH, CheckpointSender } from "../node/src/checkpoint/transfer.js";

const [dir, portFile] = process.argv.slice(2);
if (dir === undefined || portFile === undefined) {
  throw new Error("usage: checkpoint-sender.js <checkpoints dir> <port file>");
}
const store = await CheckpointStore.open(dir, pino({ level: "silent" }));
const sender = new CheckpointSender({ source: store, logger: pino({ level: "warn" }) });
const server = createServer();
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on("upgrade", (req, socket, head) => {
  if (req.url !== CHECKPOINT_PATH) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => sender.serve(ws, "bench"));
});
server.listen(0, "127.0.0.1", () => {
  writeFileSync(portFile, String((server.address() as { port: number }).port));
});
process.on("SIGTERM", () => {
  void sender
    .close()
    .then(() => store.close())
    .then(() => process.exit(0));
});
