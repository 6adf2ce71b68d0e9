// When to give up learning from the log and fetch a checkpoint instead. Pure: the runtime feeds
// it the peers' "compacted" answers and the clock, and asks it for a decision.
//
// PhxPaxos starts a transfer once a majority of the group says the asker needs a checkpoint. The
// rule here is the same in spirit: a transfer replaces the member's whole state and restarts its
// process, so it must only happen when the log really cannot help. We wait until peers that,
// together with the asker (which lacks the instance by definition), make up a quorum have said
// their logs start above the instance we need, and a grace period has passed in which any other
// peer could still have answered with log entries (an answer with entries moves our learn point,
// which drops every report). A lone peer that cleaned aggressively therefore never forces a
// transfer while another peer still holds the log.

export interface CompactedReport {
  readonly peer: string;
  /** The learn point the peer answered for. */
  readonly from: number;
  readonly minKept: number;
  readonly checkpoint: number;
  readonly at: number;
}

export interface CatchUpDecision {
  /** The peer to fetch from: the highest checkpoint, so the log after it is most likely kept. */
  readonly source: string;
  readonly checkpoint: number;
}

export class CatchUpPlanner {
  private learnPoint = -1;
  private readonly reports = new Map<string, CompactedReport>();

  constructor(private readonly graceMs: number) {}

  /**
   * Records a peer's answer; returns true when it is the first report for the current learn
   * point (the runtime then asks every other peer at once instead of waiting for retries).
   */
  report(r: CompactedReport, chosenUpTo: number): boolean {
    this.moveTo(chosenUpTo + 1);
    // Stale answers (for a point we have passed) and useless checkpoints (not past what we have)
    // say nothing about whether the log can still serve us.
    if (r.from !== this.learnPoint || r.minKept <= this.learnPoint || r.checkpoint < this.learnPoint) {
      return false;
    }
    const first = this.reports.size === 0;
    this.reports.set(r.peer, r);
    return first;
  }

  /** A transfer source once enough peers said so and the grace period has passed; null otherwise. */
  decide(now: number, chosenUpTo: number, quorum: number): CatchUpDecision | null {
    this.moveTo(chosenUpTo + 1);
    if (this.reports.size < Math.max(1, quorum - 1)) return null;
    let earliest = Number.POSITIVE_INFINITY;
    let best: CompactedReport | null = null;
    for (const r of this.reports.values()) {
      earliest = Math.min(earliest, r.at);
      if (best === null || r.checkpoint > best.checkpoint) best = r;
    }
    if (best === null || now - earliest < this.graceMs) return null;
    return { source: best.peer, checkpoint: best.checkpoint };
  }

  /** Forget everything, e.g. after a failed transfer, so fresh answers are collected. */
  reset(): void {
    this.reports.clear();
  }

  private moveTo(point: number): void {
    if (point !== this.learnPoint) {
      this.learnPoint = point;
      this.reports.clear();
    }
  }
}
