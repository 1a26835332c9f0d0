package framework

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/stickyvol/stickyvol/e2e/cluster"
)

// SetupConfig says how Setup gets a cluster with stickyvol on it.
type SetupConfig struct {
	// RepoDir is the source tree (RepoDir finds it).
	RepoDir string
	// CacheDir holds the cluster's binaries, the images and the cluster
	// directory. Default: cluster.DefaultCacheDir().
	CacheDir string
	// Attach uses the cluster already running from CacheDir instead of
	// bringing up a new one (which first clears any earlier one).
	Attach bool
	// AgentArgs are extra arguments of `stickyvol node` (DeployConfig).
	AgentArgs []string
	// FakeNodes is the number of kwok nodes the cluster gets besides its
	// real ones (cluster.Config); they have no agent until HostAgents
	// starts one for each.
	FakeNodes int
	// Helm installs stickyvol with the chart (HelmInstall) instead of the
	// kustomize overlay; HelmBinary is then the Helm CLI to use (EnsureHelm
	// builds it when empty).
	Helm       bool
	HelmBinary string
	// ClusterOut receives the cluster's own progress lines.
	ClusterOut io.Writer
	// Logf receives a line per step, with its duration.
	Logf Logf
}

// Setup brings up (or attaches to) the local cluster, builds the images,
// loads them into every node and deploys stickyvol from LocalOverlay (or
// installs the chart). When
// it brought a cluster up and then fails, it leaves the cluster running for
// the caller to dump and tear down: the returned Framework is set whenever
// a cluster runs.
func Setup(ctx context.Context, cfg SetupConfig) (*Framework, error) {
	if cfg.CacheDir == "" {
		cfg.CacheDir = cluster.DefaultCacheDir()
	}
	if cfg.ClusterOut == nil {
		cfg.ClusterOut = io.Discard
	}
	logf := cfg.Logf
	step := func(what string, do func() error) error {
		start := time.Now()
		if err := do(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		logf("%s: done in %s", what, time.Since(start).Round(100*time.Millisecond))
		return nil
	}

	var c *cluster.Cluster
	if err := step("cluster", func() (err error) {
		if cfg.Attach {
			c, err = cluster.Load(cluster.ClusterDir(cfg.CacheDir))
			if err == nil {
				c.SetOutput(cfg.ClusterOut)
				logf("attached to the running cluster in %s", c.Dir())
			}
			return err
		}
		logf("bringing up the local cluster (the first run builds Kubernetes from source: many minutes, cached after)")
		c, err = cluster.Up(ctx, cluster.Config{CacheDir: cfg.CacheDir, FakeNodes: cfg.FakeNodes, Out: cfg.ClusterOut})
		return err
	}); err != nil {
		return nil, err
	}
	f, err := New(c, cfg.RepoDir)
	if err != nil {
		return nil, err
	}
	var im Images
	if err := step("images", func() (err error) {
		if im, err = f.BuildImages(ctx, cfg.CacheDir); err != nil {
			return err
		}
		for _, img := range im.All() {
			logf("built %s (%s) in %s", img.Ref, shortDigest(img.Digest.String()), img.Tarball)
		}
		if err := f.InstallPlugin(cfg.CacheDir); err != nil {
			return err
		}
		return f.LoadImages(ctx, im)
	}); err != nil {
		return f, err
	}
	deploy := DeployConfig{Overlay: LocalOverlay, Image: im.Agent, AgentArgs: cfg.AgentArgs}
	if !cfg.Helm {
		err = step("deploy", func() error { return f.Deploy(ctx, deploy, logf) })
		return f, err
	}
	if cfg.HelmBinary == "" {
		if err := step("helm CLI", func() (err error) {
			cfg.HelmBinary, err = EnsureHelm(ctx, cfg.CacheDir, cfg.RepoDir, cfg.ClusterOut)
			return err
		}); err != nil {
			return f, err
		}
	}
	err = step("helm install", func() error { return f.HelmInstall(ctx, cfg.HelmBinary, deploy, logf) })
	return f, err
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}
