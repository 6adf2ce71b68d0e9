// Certificates for a local control plane, made with openssl: a CA, the API server's serving
// certificate, client certificates for each component, and the service-account key pair.
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run("openssl", args, { cwd });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0]} failed: ${err.stderr || err.message}`);
  }
}

/** An EC P-256 key: quick to make, and every Kubernetes component accepts it. */
async function newKey(dir: string, name: string): Promise<void> {
  await openssl(
    ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`],
    dir,
  );
}

export interface ClientIdentity {
  /** file stem, e.g. "admin" -> admin.crt, admin.key */
  name: string;
  commonName: string;
  organizations?: string[];
}

export interface Pki {
  dir: string;
  caCert: string;
  caKey: string;
  servingCert: string;
  servingKey: string;
  saKey: string;
  saPub: string;
  client(name: string): { cert: string; key: string };
}

export async function createPki(
  dir: string,
  opts: { serverIps: string[]; serverNames: string[]; clients: ClientIdentity[] },
): Promise<Pki> {
  await newKey(dir, "ca");
  await openssl(
    [
      "req",
      "-x509",
      "-new",
      "-key",
      "ca.key",
      "-subj",
      "/CN=paxos-e2e-ca",
      "-days",
      "3650",
      "-out",
      "ca.crt",
    ],
    dir,
  );

  const sign = async (name: string, subject: string, ext: string) => {
    await newKey(dir, name);
    await openssl(["req", "-new", "-key", `${name}.key`, "-subj", subject, "-out", `${name}.csr`], dir);
    await writeFile(path.join(dir, `${name}.ext`), ext);
    await openssl(
      [
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        `${name}.ext`,
        "-out",
        `${name}.crt`,
      ],
      dir,
    );
  };

  const san = [...opts.serverIps.map((ip) => `IP:${ip}`), ...opts.serverNames.map((n) => `DNS:${n}`)].join(
    ",",
  );
  await sign(
    "apiserver",
    "/CN=kube-apiserver",
    `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`,
  );
  for (const c of opts.clients) {
    const subject = [...(c.organizations ?? []).map((o) => `/O=${o}`), `/CN=${c.commonName}`].join("");
    await sign(
      c.name,
      subject,
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    );
  }

  await newKey(dir, "sa");
  await openssl(["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir);

  const p = (f: string) => path.join(dir, f);
  return {
    dir,
    caCert: p("ca.crt"),
    caKey: p("ca.key"),
    servingCert: p("apiserver.crt"),
    servingKey: p("apiserver.key"),
    saKey: p("sa.key"),
    saPub: p("sa.pub"),
    client: (name) => ({ cert: p(`${name}.crt`), key: p(`${name}.key`) }),
  };
}

/** A kubeconfig with the certificates embedded, so it can be copied anywhere. */
export async function writeKubeconfig(
  file: string,
  opts: { server: string; caCert: string; cert: string; key: string; user: string; clusterName: string },
): Promise<void> {
  const b64 = async (f: string) => (await readFile(f)).toString("base64");
  const text = [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    `- name: ${opts.clusterName}`,
    "  cluster:",
    `    server: ${opts.server}`,
    `    certificate-authority-data: ${await b64(opts.caCert)}`,
    "users:",
    `- name: ${opts.user}`,
    "  user:",
    `    client-certificate-data: ${await b64(opts.cert)}`,
    `    client-key-data: ${await b64(opts.key)}`,
    "contexts:",
    `- name: ${opts.clusterName}`,
    "  context:",
    `    cluster: ${opts.clusterName}`,
    `    user: ${opts.user}`,
    `current-context: ${opts.clusterName}`,
    "",
  ].join("\n");
  await writeFile(file, text, { mode: 0o600 });
}
