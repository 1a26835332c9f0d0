package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// DriverFile is the test driver file in the source tree.
const DriverFile = "e2e/conformance/test-driver.yaml"

// Config says what Run does.
type Config struct {
	// RepoDir is stickyvol's source tree (framework.RepoDir finds it).
	RepoDir string
	// CacheDir holds the binaries, the images, the cluster and the
	// reports (CacheDir/conformance/<time>/). Default:
	// cluster.DefaultCacheDir().
	CacheDir string
	// Attach uses the cluster running from CacheDir and leaves it up;
	// otherwise Run brings one up and tears it down at the end.
	Attach bool
	// Sanity and E2E choose the steps.
	Sanity, E2E bool
	// SanityNode is the node csi-sanity tests (default: the first).
	SanityNode string
	// Focus, Skip and Timeout are passed on to RunE2E.
	Focus, Skip string
	Timeout     time.Duration
	// DryRun lists the e2e specs Focus and Skip select and stops: no
	// cluster, no images, no csi-sanity.
	DryRun bool
	// Out receives progress lines, the e2e binary's output and the
	// summaries.
	Out io.Writer
}

// Result is what a run found.
type Result struct {
	// ReportDir holds the JUnit reports and the logs of this run.
	ReportDir   string
	Sanity, E2E *Report
}

// Passed reports whether nothing that ran failed.
func (r *Result) Passed() bool {
	for _, rep := range []*Report{r.Sanity, r.E2E} {
		if rep != nil && (rep.Counts().Failed > 0 || len(rep.Setup) > 0) {
			return false
		}
	}
	return true
}

// Run prepares the binaries and images, gets a cluster with stickyvol
// deployed (framework.Setup), loads the images into every node, runs the
// chosen steps and writes their summaries. The error says what kept a step
// from running or from being judged; failed specs are in the Result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	start := time.Now()
	if cfg.CacheDir == "" {
		cfg.CacheDir = cluster.DefaultCacheDir()
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(cfg.Out, "[conformance %6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	res, err := newResult(cfg, start)
	if err != nil {
		return nil, err
	}
	bins, err := EnsureBinaries(ctx, cfg.CacheDir, cfg.RepoDir, cfg.Out)
	if err != nil {
		return res, err
	}
	logf("binaries ready: %s, %s, %s", bins.E2E, bins.Agnhost, bins.CSISanity)
	if cfg.DryRun {
		res.E2E, err = RunE2E(ctx, e2eConfig(cfg, bins, res))
		if err == nil {
			fmt.Fprintf(cfg.Out, "dry run: %d specs selected, %d left out by focus and skip\n",
				len(res.E2E.Specs), res.E2E.NotSelected)
			WriteSelection(cfg.Out, res.E2E)
		}
		return res, err
	}
	images, err := EnsureImages(ctx, cfg.CacheDir, bins.Agnhost)
	if err != nil {
		return res, err
	}

	f, err := framework.Setup(ctx, framework.SetupConfig{
		RepoDir: cfg.RepoDir, CacheDir: cfg.CacheDir, Attach: cfg.Attach, ClusterOut: cfg.Out, Logf: logf,
	})
	if !cfg.Attach {
		// Also after a failed setup: Up may have left a cluster for the dump.
		defer tearDown(ctx, cfg, logf, start)
	}
	if err != nil {
		if f != nil {
			f.Dump(ctx, cfg.Out)
		}
		return res, err
	}
	for _, img := range images {
		if err := f.Cluster.LoadImage(ctx, img.Tarball); err != nil {
			return res, fmt.Errorf("loading %s: %w", img.Ref, err)
		}
	}
	logf("loaded %d test images into every node", len(images))

	err = runSteps(ctx, f, cfg, bins, res, logf)
	if err != nil || !res.Passed() {
		writeDump(ctx, f, filepath.Join(res.ReportDir, "dump.txt"), logf)
	}
	logf("reports and logs in %s", res.ReportDir)
	return res, err
}

// runSteps runs csi-sanity and the e2e suites, as chosen, and writes a
// summary after each.
func runSteps(ctx context.Context, f *framework.Framework, cfg Config, bins *Binaries, res *Result, logf framework.Logf) error {
	var errs []error
	if cfg.Sanity {
		start := time.Now()
		logf("csi-sanity against the agent on %s ...", cmpOr(cfg.SanityNode, "the first node"))
		report, err := RunSanity(ctx, f, SanityConfig{Binary: bins.CSISanity, Node: cfg.SanityNode, ReportDir: res.ReportDir})
		if report != nil {
			res.Sanity = report
			WriteSummary(cfg.Out, "csi-sanity", report, time.Since(start))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("csi-sanity: %w", err))
		}
	}
	if cfg.E2E {
		start := time.Now()
		logf("External.Storage e2e suites (output also in %s) ...", filepath.Join(res.ReportDir, "e2e.log"))
		e2eCfg := e2eConfig(cfg, bins, res)
		e2eCfg.Kubeconfig, e2eCfg.Kubectl, e2eCfg.Out = f.Cluster.Kubeconfig(), f.Cluster.Kubectl(), cfg.Out
		report, err := RunE2E(ctx, e2eCfg)
		if report != nil {
			res.E2E = report
			WriteSummary(cfg.Out, "External.Storage", report, time.Since(start))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("e2e: %w", err))
		}
	}
	return errors.Join(errs...)
}

func e2eConfig(cfg Config, bins *Binaries, res *Result) E2EConfig {
	return E2EConfig{
		Binary: bins.E2E, DriverFile: filepath.Join(cfg.RepoDir, DriverFile), ReportDir: res.ReportDir,
		Focus: cfg.Focus, Skip: cfg.Skip, Timeout: cfg.Timeout, DryRun: cfg.DryRun,
	}
}

// tearDown takes down the cluster Run brought up, also when ctx ended.
func tearDown(ctx context.Context, cfg Config, logf framework.Logf, start time.Time) {
	down := time.Now()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := cluster.DownDir(ctx, cluster.ClusterDir(cfg.CacheDir), cfg.Out); err != nil {
		logf("tearing down the cluster: %v", err)
	}
	logf("cluster down in %s; total %s", time.Since(down).Round(time.Second), time.Since(start).Round(time.Second))
}

// newResult makes the run's report directory: CacheDir/conformance/<time>,
// with the link "latest" pointing at it, or "dry-run" (replaced each time).
func newResult(cfg Config, start time.Time) (*Result, error) {
	base := filepath.Join(cfg.CacheDir, "conformance")
	if cfg.DryRun {
		dir := filepath.Join(base, "dry-run")
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		return &Result{ReportDir: dir}, os.MkdirAll(dir, 0o755)
	}
	name := start.Format("20060102-150405")
	if err := os.MkdirAll(filepath.Join(base, name), 0o755); err != nil {
		return nil, err
	}
	latest := filepath.Join(base, "latest")
	if err := os.Remove(latest); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return &Result{ReportDir: filepath.Join(base, name)}, os.Symlink(name, latest)
}

// writeDump keeps what explains a failure beyond the reports: the agents'
// logs, stickyvol's PVs and the tails of the cluster components' logs.
func writeDump(ctx context.Context, f *framework.Framework, path string, logf framework.Logf) {
	file, err := os.Create(path)
	if err != nil {
		logf("writing the dump: %v", err)
		return
	}
	defer file.Close()
	f.Dump(ctx, file)
	logf("agent logs, PVs and component logs in %s", path)
}
