// Command etcd is the upstream etcd server, built from the module version that k8s.io/apiserver
// pins, so the test control plane needs nothing but Go to obtain it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
