// The checkpoint transfer's public face; the protocol is described in transfer-protocol.ts.

export {
  CHECKPOINT_PATH,
  type CheckpointSource,
  type TransferableCheckpoint,
  TransferError,
  type TransferProgress,
} from "./transfer-protocol.js";
export { type ReceiveCheckpointOptions, receiveCheckpoint } from "./transfer-receiver.js";
export { CheckpointSender, type CheckpointSenderOptions } from "./transfer-sender.js";
