// Command conformance runs csi-sanity and the upstream Kubernetes
// External.Storage e2e suites against stickyvol on the local cluster
// (package e2e/conformance). `make conformance` runs it; it needs root,
// except for --dry-run and --prepare.
//
//	conformance                      bring up a cluster, deploy, run both steps, tear down
//	STICKYVOL_E2E_ATTACH=1 conformance   use the running cluster (make cluster-up), leave it up
//	conformance --dry-run            list the e2e specs selected, by suite (no cluster)
//	conformance --prepare            build the programs and images only
//	conformance --sanity=false       only the e2e suites
//
// Reports and logs go to <cache-dir>/conformance/<time>/: junit_01.xml and
// e2e.log (e2e), csi-sanity.xml and csi-sanity.log, dump.txt after a failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/conformance"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// envAttach is the variable the e2e suites also read: set, the run uses the
// cluster running from the cache directory and leaves it up.
const envAttach = "STICKYVOL_E2E_ATTACH"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	passed, err := run(ctx, os.Args[1:], os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
	}
	if err != nil || !passed {
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) (bool, error) {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	cfg := conformance.Config{Out: out}
	var prepare bool
	fs.StringVar(&cfg.CacheDir, "cache-dir", cluster.DefaultCacheDir(), "`directory` for binaries, images, the cluster and the reports")
	fs.BoolVar(&cfg.Attach, "attach", os.Getenv(envAttach) != "", "use the cluster running from the cache directory and leave it up (default: $"+envAttach+" is set)")
	fs.BoolVar(&cfg.Sanity, "sanity", true, "run csi-sanity against the agent of a real node")
	fs.StringVar(&cfg.SanityNode, "sanity-node", "", "`node` whose agent csi-sanity tests (default: the first)")
	fs.BoolVar(&cfg.E2E, "e2e", true, "run the External.Storage e2e suites")
	fs.StringVar(&cfg.Focus, "focus", conformance.DefaultFocus, "`regexp` of the e2e specs to run")
	fs.StringVar(&cfg.Skip, "skip", conformance.DefaultSkip, "`regexp` of the e2e specs not to run")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Hour, "bound on the e2e run")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "list the selected e2e specs by suite and stop (no cluster)")
	fs.BoolVar(&prepare, "prepare", false, "build the programs and the images and stop (no cluster)")
	ctx, err := framework.ParseFlags(ctx, fs, args)
	if err != nil {
		return false, err
	}
	repo, err := framework.RepoDir(".")
	if err != nil {
		return false, err
	}
	cfg.RepoDir = repo
	if prepare {
		return true, prepareOnly(ctx, cfg)
	}
	res, err := conformance.Run(ctx, cfg)
	return err == nil && res.Passed(), err
}

// prepareOnly builds what a run needs before it starts a cluster.
func prepareOnly(ctx context.Context, cfg conformance.Config) error {
	start := time.Now()
	bins, err := conformance.EnsureBinaries(ctx, cfg.CacheDir, cfg.RepoDir, cfg.Out)
	if err != nil {
		return err
	}
	images, err := conformance.EnsureImages(ctx, cfg.CacheDir, bins.Agnhost)
	if err != nil {
		return err
	}
	fmt.Fprintf(cfg.Out, "e2e binary  %s\nagnhost     %s\ncsi-sanity  %s\n", bins.E2E, bins.Agnhost, bins.CSISanity)
	for _, img := range images {
		fmt.Fprintf(cfg.Out, "image       %s  %s\n", img.Ref, img.Tarball)
	}
	fmt.Fprintf(cfg.Out, "ready in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}
