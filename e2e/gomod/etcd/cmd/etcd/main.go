// Wrapper main for etcd, mirrors go.etcd.io/etcd/server/v3's main
// (see e2e/build-control-plane.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
