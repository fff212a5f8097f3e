// Command cluster-tools is every pinned Go tool the tests, the chart checks and the demo run, in
// one binary, as hyperkube once was: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kubectl and helm. Built as one program, the packages they share (client-go,
// apimachinery, the API types, gRPC, Prometheus) compile once and the binary links once, which
// roughly halves the CPU a fresh machine spends on them (docs/development.md, "Build times").
//
// The tool to run is the name the binary is called by (hack/install-tools.sh links each tool's
// name to it), or the first argument: `cluster-tools kubectl version --client`.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	_ "time/tzdata" // CronJob time zones (kube-apiserver, kube-controller-manager)

	"go.etcd.io/etcd/server/v3/etcdmain"
	helmcmd "helm.sh/helm/v4/pkg/cmd"
	helmkube "helm.sh/helm/v4/pkg/kube"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's and helm's client auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go's Prometheus metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// Each entry does what the tool's own main package does (they cannot be imported).
var tools = map[string]func(){
	"etcd": func() { etcdmain.Main(os.Args) },
	"kube-apiserver": func() {
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	},
	"kube-controller-manager": func() {
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	},
	"kube-scheduler": func() {
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	},
	"kubectl": func() {
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	},
	"helm": func() {
		helmkube.ManagedFieldsManager = "helm"
		cmd, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
		if err != nil {
			slog.Warn("command failed", slog.Any("error", err))
			os.Exit(1)
		}
		if err := cmd.Execute(); err != nil {
			if cerr, ok := errors.AsType[helmcmd.CommandError](err); ok {
				os.Exit(cerr.ExitCode)
			}
			os.Exit(1)
		}
	},
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := tools[name]; !ok && len(os.Args) > 1 {
		if _, ok := tools[os.Args[1]]; ok {
			// `cluster-tools kubectl ...`: the tool sees itself as argv[0].
			name = os.Args[1]
			os.Args = os.Args[1:]
		}
	}
	run, ok := tools[name]
	if !ok {
		names := make([]string, 0, len(tools))
		for n := range tools {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "cluster-tools: call me by one of these names (a link), or name one as the first argument: %v\n", names)
		os.Exit(2)
	}
	run()
}
