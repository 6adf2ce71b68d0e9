// What the scenarios get from a cluster provider: a kubeconfig and the image names to use.
export interface ClusterHandle {
  provider: "local" | "kind";
  kubeconfig: string;
  images: { testServer: string; node: string; operator: string };
  /** A container's output (all its restarts on the local provider, the current one on kind). */
  containerLog(namespace: string, pod: string, container: string): Promise<string>;
  /** Tears down what the provider started (a cluster it only connected to stays). */
  stop(): Promise<void>;
}
