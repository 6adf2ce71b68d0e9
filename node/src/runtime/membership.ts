// The membership admin API (DESIGN.md, issue 4): list, add a learner, promote, remove, hand the
// master over. The core validates and decides; this layer parses bodies and maps its outcomes to
// HTTP: malformed -> 400 bad_request, a change that does not apply -> 400 invalid_change, another
// change in progress -> 409 conflict, a change that would leave no quorum -> 409 unsafe_change,
// asked of a non-master -> 503 not_master (naming the master).

import type { AdminFailureReason, CoreStatus } from "../paxos/core.js";
import type { ConfigChange, MemberId } from "../paxos/types.js";
import { type AdminRoutes, HttpError } from "../server/admin-routes.js";

/** Same rule as member names on the command line: a DNS label. */
const MEMBER_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** host:port, with an IPv6 host in brackets. */
const ADDRESS = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/;

export interface MembershipHost {
  status(): CoreStatus;
  /** Resolves with the instance that chose the change, once it is in force. */
  propose(change: ConfigChange): Promise<number>;
  /** Resolves once `to` is master. */
  transferMaster(to: MemberId): Promise<number>;
}

/** An admin request the core refused; `reason` says why, `message` says it for people. */
export class AdminRefusal extends Error {
  override readonly name = "AdminRefusal";
  constructor(
    readonly reason: AdminFailureReason,
    message: string,
  ) {
    super(message);
  }
}

export function membershipRoutes(host: MembershipHost): AdminRoutes {
  const onMaster = async <T>(attempt: () => Promise<T>): Promise<T> => {
    const s = host.status();
    if (s.role !== "master") {
      throw new HttpError(
        503,
        "not_master",
        `membership changes are made by the master; ask ${s.master ?? "the master (none is known yet)"}`,
      );
    }
    try {
      return await attempt();
    } catch (e) {
      throw e instanceof AdminRefusal ? refusalToHttp(e, host.status().master) : e;
    }
  };
  return [
    {
      method: "GET",
      path: "/v1/admin/members",
      handle: () => {
        const s = host.status();
        return {
          master: s.master,
          members: s.configuration.members,
          pending: s.configuration.pending === null ? null : { members: s.configuration.pending.members },
        };
      },
    },
    {
      method: "POST",
      path: "/v1/admin/members",
      handle: async ({ body }) => {
        const { name, address } = parseAddMember(body);
        const instance = await onMaster(() => host.propose({ kind: "addLearner", name, address }));
        return { instance };
      },
    },
    {
      method: "POST",
      path: "/v1/admin/members/:name/promote",
      handle: async ({ params }) => {
        const name = memberParam(params.name);
        return { instance: await onMaster(() => host.propose({ kind: "promote", name })) };
      },
    },
    {
      method: "DELETE",
      path: "/v1/admin/members/:name",
      handle: async ({ params }) => {
        const name = memberParam(params.name);
        return { instance: await onMaster(() => host.propose({ kind: "remove", name })) };
      },
    },
    {
      method: "POST",
      path: "/v1/admin/master/transfer",
      handle: async ({ body }) => {
        const to = parseTransfer(body);
        await onMaster(() => host.transferMaster(to));
        return { master: to };
      },
    },
  ];
}

function refusalToHttp(e: AdminRefusal, master: string | null): HttpError {
  switch (e.reason) {
    case "invalid":
      return new HttpError(400, "invalid_change", e.message);
    case "conflict":
      return new HttpError(409, "conflict", e.message);
    case "no_quorum":
      return new HttpError(409, "unsafe_change", e.message);
    case "lost":
      return new HttpError(409, "conflict", `${e.message}; nothing changed, it may be asked again`);
    case "not_master":
      return new HttpError(503, "not_master", `${e.message}; ask ${master ?? "the master"}`);
    case "timeout":
      return new HttpError(504, "timeout", e.message);
  }
}

function badRequest(message: string): HttpError {
  return new HttpError(400, "bad_request", message);
}

function memberParam(name: string | undefined): string {
  if (name === undefined || !MEMBER_NAME.test(name)) {
    throw badRequest(`"${name ?? ""}" is not a member name (1 to 63 lowercase letters, digits and '-')`);
  }
  return name;
}

function asObject(body: unknown, expected: string): Record<string, unknown> {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw badRequest(`the body must be a JSON object ${expected}`);
  }
  return body as Record<string, unknown>;
}

function checkFields(o: Record<string, unknown>, allowed: readonly string[], expected: string): void {
  const unknown = Object.keys(o).filter((k) => !allowed.includes(k));
  if (unknown.length > 0)
    throw badRequest(`unknown field ${unknown.map((k) => `"${k}"`).join(", ")}; expected ${expected}`);
}

const ADD_MEMBER = '{"name": ..., "address": "host:port", "role": "learner"}';

export function parseAddMember(body: unknown): { name: string; address: string } {
  const o = asObject(body, ADD_MEMBER);
  checkFields(o, ["name", "address", "role"], ADD_MEMBER);
  if (typeof o.name !== "string" || !MEMBER_NAME.test(o.name)) {
    throw badRequest("\"name\" must be a member name: 1 to 63 lowercase letters, digits and '-'");
  }
  const port = typeof o.address === "string" ? ADDRESS.exec(o.address)?.[2] : undefined;
  if (port === undefined || Number(port) < 1 || Number(port) > 65535) {
    throw badRequest('"address" must be host:port of the new member\'s peer port');
  }
  if (o.role !== "learner") {
    throw badRequest('"role" must be "learner": members join as learners and are promoted later');
  }
  return { name: o.name, address: o.address as string };
}

const TRANSFER = '{"to": "<member>"}';

export function parseTransfer(body: unknown): string {
  const o = asObject(body, TRANSFER);
  checkFields(o, ["to"], TRANSFER);
  if (typeof o.to !== "string" || !MEMBER_NAME.test(o.to)) throw badRequest('"to" must be a member name');
  return o.to;
}
