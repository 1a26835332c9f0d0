package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stickyvol/stickyvol/e2e/bench"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// runInstant runs the instant provisioner (bench.RunInstant) until it is
// killed: the bench starts it as a process of the cluster, so that its CPU
// time and memory can be read like an agent's.
func runInstant(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench "+instantCommand, flag.ContinueOnError)
	var kubeconfig, readyFile string
	cfg := bench.InstantConfig{}
	qps, burst := 1000.0, 2000
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig `file`")
	fs.StringVar(&cfg.StorageClass, "storage-class", bench.InstantStorageClass, "StorageClass whose claims to provision")
	fs.StringVar(&cfg.Driver, "driver", bench.InstantDriver, "CSI driver the PVs name")
	fs.IntVar(&cfg.Workers, "workers", 10, "PVs created or deleted at once (stickyvol's --threadiness default)")
	fs.Float64Var(&qps, "kube-api-qps", qps, "client QPS: high, so that the client's rate limiter never holds the baseline back")
	fs.IntVar(&burst, "kube-api-burst", burst, "client burst")
	fs.StringVar(&readyFile, "ready-file", "", "`file` to create once the informers have synced")
	ctx, err := framework.ParseFlags(ctx, fs, args)
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = float32(qps), burst
	rc.UserAgent = "stickyvol-bench-instant"
	// Protobuf, as stickyvol's agents use.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	cfg.Synced = func() error {
		if readyFile == "" {
			return nil
		}
		if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
			return fmt.Errorf("ready file: %w", err)
		}
		return nil
	}
	return bench.RunInstant(ctx, cfg)
}
