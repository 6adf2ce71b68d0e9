// The admin API is a table, so features (cleaner, membership, master transfer) add their routes
// without touching the HTTP server. The server authenticates, parses the JSON body, calls the
// handler and serialises its result (200) or its error.

/**
 * Thrown by an admin handler to answer with a specific status and error code, e.g.
 * `new HttpError(400, "bad_request", "holdCount must be an integer >= 0")` or
 * `new HttpError(409, "conflict", "a membership change is already in progress")`.
 * A `ServiceError` thrown by a handler is mapped like on the KV routes.
 */
export class HttpError extends Error {
  override readonly name = "HttpError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type AdminMethod = "GET" | "PUT" | "POST" | "DELETE";

export interface AdminRequest {
  /** The parsed JSON body; `undefined` when the request had none. */
  readonly body: unknown;
  /** Values of the pattern's `:name` segments, percent-decoded. */
  readonly params: Readonly<Record<string, string>>;
  readonly query: URLSearchParams;
}

export interface AdminRoute {
  readonly method: AdminMethod;
  /** The full path, starting with `/v1/admin/`; a segment `:name` matches any one non-empty segment. */
  readonly path: string;
  /** Its result is sent as JSON with status 200. */
  handle(request: AdminRequest): unknown | Promise<unknown>;
}

export type AdminRoutes = readonly AdminRoute[];

export const ADMIN_PREFIX = "/v1/admin/";

export type AdminMatch =
  | { readonly kind: "found"; readonly route: AdminRoute; readonly params: Record<string, string> }
  | { readonly kind: "method_not_allowed"; readonly allow: readonly string[] }
  | { readonly kind: "not_found" };

export interface AdminRouter {
  match(method: string, path: string): AdminMatch;
}

interface Compiled {
  readonly route: AdminRoute;
  /** A literal segment, or `{ param }` for a `:name` segment. */
  readonly segments: readonly (string | { readonly param: string })[];
}

/** Validates the table once at start-up, so a bad pattern fails fast instead of never matching. */
export function compileAdminRoutes(routes: AdminRoutes): AdminRouter {
  const compiled: Compiled[] = [];
  const seen = new Set<string>();
  for (const route of routes) {
    if (!route.path.startsWith(ADMIN_PREFIX) || route.path.length === ADMIN_PREFIX.length) {
      throw new Error(`admin route ${route.method} ${route.path}: the path must start with ${ADMIN_PREFIX}`);
    }
    const id = `${route.method} ${route.path}`;
    if (seen.has(id)) throw new Error(`admin route ${id} is registered twice`);
    seen.add(id);
    const segments = route.path
      .slice(1)
      .split("/")
      .map((s) => {
        if (s === "" || s === ":") throw new Error(`admin route ${id}: empty path segment`);
        return s.startsWith(":") ? { param: s.slice(1) } : s;
      });
    compiled.push({ route, segments });
  }

  return {
    match(method: string, path: string): AdminMatch {
      const parts = path.slice(1).split("/");
      const allow: string[] = [];
      for (const c of compiled) {
        const params = matchSegments(c.segments, parts);
        if (params === undefined) continue;
        if (c.route.method === method) return { kind: "found", route: c.route, params };
        allow.push(c.route.method);
      }
      return allow.length > 0 ? { kind: "method_not_allowed", allow } : { kind: "not_found" };
    },
  };
}

function matchSegments(
  segments: Compiled["segments"],
  parts: readonly string[],
): Record<string, string> | undefined {
  if (segments.length !== parts.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const part = parts[i]!;
    if (typeof seg === "string") {
      if (seg !== part) return undefined;
      continue;
    }
    if (part === "") return undefined;
    try {
      params[seg.param] = decodeURIComponent(part);
    } catch {
      throw new HttpError(400, "bad_request", `path segment "${part}" is not valid percent-encoded UTF-8`);
    }
  }
  return params;
}
