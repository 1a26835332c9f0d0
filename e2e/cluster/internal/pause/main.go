// Command pause is the sandbox container of every pod on the local cluster's
// nodes: it holds the pod's namespaces, reaps the zombies it inherits as PID 1
// of a pod that shares its process namespace, and exits on SIGINT or SIGTERM.
// EnsureBaseImages builds it from this file, embedded in package cluster, and
// packs it as registry.k8s.io/pause:3.10, so no registry is needed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child; one SIGCHLD may stand for several.
func reap() {
	for {
		pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
