// Command stickyvol is the node agent of the stickyvol hostpath CSI driver
// (`stickyvol node`), its cluster controller (`stickyvol controller`) and a
// small client (`stickyvol status`), which is also
// the kubectl plugin `kubectl stickyvol` when installed as kubectl-stickyvol.
//
// This file only wires: environment and flags into option structs, logging,
// signals into a context. node.go, status.go and serve.go build and run the
// parts.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/klog/v2"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

// environment holds what main reads from the process environment; nothing
// else does.
type environment struct {
	// nodeName is NODE_NAME, which the DaemonSet sets from spec.nodeName.
	nodeName string
	// podNamespace is POD_NAMESPACE, the namespace the pod runs in.
	podNamespace string
	// podName is POD_NAME: the controller's identity in its Lease, and the
	// agent's pod, whose owner owns the agent's CSIStorageCapacity objects.
	podName string
}

// namespaceOr is the pod's namespace, or def outside a pod.
func (e environment) namespaceOr(def string) string {
	if e.podNamespace != "" {
		return e.podNamespace
	}
	return def
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd := newRootCommand(commandName(os.Args[0]), environment{
		nodeName: os.Getenv("NODE_NAME"), podNamespace: os.Getenv("POD_NAMESPACE"), podName: os.Getenv("POD_NAME"),
	})
	err := cmd.ExecuteContext(ctx)
	stop()
	logs.FlushLogs()
	if err != nil {
		os.Exit(1)
	}
}

// newRootCommand builds the command tree. name is how the help calls the
// program: "stickyvol", or "kubectl stickyvol" when it runs as the kubectl
// plugin (installed as kubectl-stickyvol).
func newRootCommand(name string, env environment) *cobra.Command {
	logging := logsapi.NewLoggingConfiguration()
	root := &cobra.Command{
		Use: "stickyvol",
		// Cobra takes a command's name from the first word of Use; the
		// annotation changes only what help and usage print.
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: name},
		Short:       "Node-local persistent volumes for Kubernetes, one directory per claim",
		Long: "stickyvol provisions a directory on the node a pod was scheduled to for every claim of a\n" +
			"stickyvol StorageClass, and serves it to kubelet as a CSI driver.",
		SilenceUsage: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			// No feature gate: the logging defaults (contextual logging
			// on, JSON allowed, alpha options off) are what stickyvol wants.
			if err := logsapi.ValidateAndApply(logging, nil); err != nil {
				return err
			}
			// Everything below gets its logger from the context.
			cmd.SetContext(klog.NewContext(cmd.Context(), klog.Background()))
			return nil
		},
	}
	logsapi.AddFlags(logging, root.PersistentFlags())
	// Alpha options need the LoggingAlphaOptions feature gate, which
	// stickyvol does not offer; listing them would only invite an error.
	for _, name := range []string{"log-text-split-stream", "log-text-info-buffer-size",
		"log-json-split-stream", "log-json-info-buffer-size"} {
		_ = root.PersistentFlags().MarkHidden(name)
	}
	root.AddCommand(newNodeCommand(env), newControllerCommand(env), newStatusCommand(), newVersionCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "stickyvol %s\n", version)
		},
	}
}
