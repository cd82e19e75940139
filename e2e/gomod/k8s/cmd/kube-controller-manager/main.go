// Wrapper main for kube-controller-manager, built from k8s.io/kubernetes as a module dependency
// (see e2e/build-control-plane.sh). Mirrors k8s.io/kubernetes/cmd/kube-controller-manager.
package main

import (
	"os"
	_ "time/tzdata" // for CronJob time zone support

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
