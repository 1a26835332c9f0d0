// Command localcluster runs the project's local Kubernetes cluster (package
// e2e/cluster): a real control plane and real nodes on this machine, no
// registry needed. It needs root.
//
//	localcluster up [--nodes N] [--fake-nodes N] [--retain]   start (after clearing any earlier cluster)
//	                                                          (--nodes 0 --fake-nodes N: kwok nodes only)
//	localcluster down                                         stop and undo every host change
//	localcluster status                                       list the cluster's processes and nodes
//	localcluster env                                          print the two export lines again
//	localcluster prepare                                      install packages, build binaries and images only
//
// Every command takes --cache-dir (default $HOME/.cache/stickyvol) and the
// logging flags (-v). up and env print, on stdout and nothing else:
//
//	export KUBECONFIG=...
//	export PATH="<dir with kubectl>:$PATH"
//
// so that `eval "$(localcluster up)"` points the shell at the cluster.
// Progress goes to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

const usage = `usage: localcluster up|down|status|env|prepare [flags]
  up        bring up the cluster (clears any earlier one first); prints the export lines
  down      stop the cluster and undo its host changes (safe to run twice)
  status    show the cluster's processes and nodes
  env       print the export lines of the running cluster
  prepare   install OS packages, build the binaries and base images, start nothing
Run "localcluster <command> -h" for the flags of a command.`

func main() {
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], os.Args[2:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, command string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("localcluster "+command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := cluster.Config{Out: stderr}
	fs.StringVar(&cfg.CacheDir, "cache-dir", cluster.DefaultCacheDir(), "`directory` for binaries, images and the cluster (cluster/ below it)")
	if command == "up" {
		fs.IntVar(&cfg.Nodes, "nodes", 2, "number of real nodes (0-50; 0 needs --fake-nodes)")
		fs.IntVar(&cfg.FakeNodes, "fake-nodes", 0, "number of kwok fake nodes (tainted kwok.x-k8s.io/node=fake:NoSchedule)")
		fs.IntVar(&cfg.FakeNodePods, "fake-node-pods", 110, "pods each kwok node has room for")
		fs.BoolVar(&cfg.PlainDataRoots, "plain-data-roots", false, "make each node's /var/lib/stickyvol a plain host directory instead of a btrfs file system of its own (sizes then are bookkeeping only)")
		fs.BoolVar(&cfg.Retain, "retain", false, "keep what was started when up fails, for debugging")
	}
	ctx, err := framework.ParseFlags(ctx, fs, args)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, usage)
	}
	if command == "up" {
		if err := upNodes(&cfg); err != nil {
			return err
		}
	}
	dir := cluster.ClusterDir(cfg.CacheDir)

	switch command {
	case "up":
		start := time.Now()
		c, err := cluster.Up(ctx, cfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "cluster up in %s; logs in %s\n", time.Since(start).Round(100*time.Millisecond), filepath.Join(c.Dir(), "logs"))
		printEnv(stdout, c)
		return nil
	case "down":
		start := time.Now()
		if err := cluster.DownDir(ctx, dir, stderr); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "down in %s\n", time.Since(start).Round(100*time.Millisecond))
		return nil
	case "status":
		c, err := cluster.Load(dir)
		if err != nil {
			return err
		}
		return printStatus(stdout, c)
	case "env":
		c, err := cluster.Load(dir)
		if err != nil {
			return err
		}
		printEnv(stdout, c)
		return nil
	case "prepare":
		_, _, err := cluster.Prepare(ctx, cfg.CacheDir, stderr)
		return err
	default:
		return fmt.Errorf("unknown command %q\n%s", command, usage)
	}
}

// upNodes turns --nodes into cluster.Config.Nodes, where 0 means the
// default and NoRealNodes means none.
func upNodes(cfg *cluster.Config) error {
	switch {
	case cfg.Nodes < 0:
		return fmt.Errorf("--nodes must not be negative, not %d", cfg.Nodes)
	case cfg.Nodes == 0 && cfg.FakeNodes < 1:
		return errors.New("--nodes 0 needs --fake-nodes: a cluster needs some node")
	case cfg.Nodes == 0:
		cfg.Nodes = cluster.NoRealNodes
	}
	return nil
}

// printEnv prints the two lines that point a shell at the cluster.
func printEnv(w io.Writer, c *cluster.Cluster) {
	fmt.Fprintf(w, "export KUBECONFIG=%s\n", shellQuote(c.Kubeconfig()))
	fmt.Fprintf(w, "export PATH=%s:\"$PATH\"\n", shellQuote(filepath.Join(c.Dir(), "bin")))
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// printStatus prints the processes and nodes; it fails when a process is
// not running, so scripts can check the cluster with it.
func printStatus(w io.Writer, c *cluster.Cluster) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tPID\tSTATE")
	var down []string
	for _, s := range c.Status() {
		state := "running"
		if !s.Running {
			state = "stopped"
			down = append(down, s.Name)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", s.Name, s.PID, state)
	}
	fmt.Fprintln(tw, "\nNODE\tIP\t/var/lib/stickyvol ON THE HOST")
	for _, n := range c.Nodes() {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", n.Name, n.IP, n.DataDir)
	}
	fmt.Fprintf(tw, "\nKUBECONFIG\t%s\n", c.Kubeconfig())
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(down) > 0 {
		return errors.New("not running: " + strings.Join(down, ", "))
	}
	return nil
}
