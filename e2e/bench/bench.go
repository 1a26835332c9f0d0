// Package bench measures provisioning at cluster scale on the local
// cluster: a Parallel StatefulSet of N pods on kwok nodes, served by
// stickyvol's agents as host processes (one per fake node) and, in the same
// run, by an instant provisioner that does no work at all, which is the
// limit any provisioner can reach on that cluster; then the agents' memory
// with many objects of other nodes in the cluster. `make bench` runs it
// through e2e/cmd/bench.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// Config says what to run.
type Config struct {
	// RepoDir is the stickyvol source tree (framework.RepoDir).
	RepoDir string
	// CacheDir holds the cluster, the binaries and the results.
	CacheDir string
	// Attach uses the cluster running from CacheDir (it needs FakeNodes
	// kwok nodes with room for the claims) and leaves it up.
	Attach bool
	// FakeNodes is the number of kwok nodes, each with an agent.
	FakeNodes int
	// Claims are the StatefulSet sizes, each run Runs times per
	// provisioner; the first is the one the summary line reports.
	Claims []int
	Runs   int
	// Objects is the number of claims, and of PVs, of other nodes in the
	// memory scenario; SkipMemory leaves that scenario out.
	Objects    int
	SkipMemory bool
	// Profile takes CPU and heap profiles of one agent during the first
	// stickyvol run, into the output directory (profile.go).
	Profile bool
	// OutDir receives results.json and chart.png. Default:
	// CacheDir/bench/<time>, with CacheDir/bench/latest linked to it.
	OutDir string
	// DriverPairsPerSecond is the driver benchmark's figure, when it ran
	// before (ParseDriverBench); 0 if not.
	DriverPairsPerSecond float64
	// InstantCommand runs the instant provisioner as a process of its own
	// (RunInstant behind flags; e2e/cmd/bench's hidden subcommand).
	InstantCommand []string
	// Out receives the table and the summary line; Logf the progress;
	// ClusterOut the cluster's own progress lines.
	Out        io.Writer
	Logf       framework.Logf
	ClusterOut io.Writer
}

func (cfg *Config) validate() error {
	var errs []error
	if cfg.FakeNodes < 1 {
		errs = append(errs, fmt.Errorf("fake nodes must be at least 1, not %d", cfg.FakeNodes))
	}
	if len(cfg.Claims) == 0 || slices.ContainsFunc(cfg.Claims, func(n int) bool { return n < 1 }) {
		errs = append(errs, fmt.Errorf("claims must be positive counts, not %v", cfg.Claims))
	}
	if cfg.Runs < 1 {
		errs = append(errs, fmt.Errorf("runs must be at least 1, not %d", cfg.Runs))
	}
	if !cfg.SkipMemory && cfg.Objects < 1 {
		errs = append(errs, fmt.Errorf("objects must be at least 1, not %d", cfg.Objects))
	}
	if len(cfg.InstantCommand) == 0 {
		errs = append(errs, errors.New("no command for the instant provisioner"))
	}
	return errors.Join(errs...)
}

// podsPerFakeNode is the pods capacity each kwok node gets: room for the
// whole largest StatefulSet, however the scheduler spreads it.
func podsPerFakeNode(claims []int) int { return max(110, slices.Max(claims)) }

// benchQPS is the bench's own client rate limit: it creates the memory
// scenario's objects, and must not be what limits their creation.
const benchQPS = 1000

// Run brings up the cluster (or attaches to it), runs the scenarios, and
// writes and prints the results. On failure it returns what it measured
// so far with the error, after printing the cluster's log tails.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logf := cfg.Logf
	res := &Results{
		Started: time.Now(), Version: framework.SourceVersion(ctx, cfg.RepoDir), Machine: thisMachine(),
		FakeNodes: cfg.FakeNodes, Claims: cfg.Claims, RunsPerScenario: cfg.Runs,
		ControllerManagerQPS: cluster.ControllerManagerQPS, ControllerManagerBurst: cluster.ControllerManagerBurst,
		DriverPairsPerSecond: cfg.DriverPairsPerSecond,
	}
	outDir, err := outputDir(cfg, res.Started)
	if err != nil {
		return nil, err
	}
	logf("building stickyvol")
	binary, err := framework.BuildAgent(ctx, cfg.RepoDir, cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	c, err := startCluster(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if !cfg.Attach {
		defer func() {
			down := time.Now()
			if derr := cluster.DownDir(context.WithoutCancel(ctx), c.Dir(), cfg.ClusterOut); derr != nil {
				logf("tearing down the cluster: %v", derr)
			}
			logf("cluster down in %s", time.Since(down).Round(100*time.Millisecond))
		}()
	}
	profileDir := ""
	if cfg.Profile {
		profileDir = outDir
	}
	err = runAll(ctx, cfg, c, binary, profileDir, res)
	if err != nil {
		c.PrintLogTails(cfg.ClusterOut, 20)
	}
	return res, errors.Join(err, finish(cfg, res, outDir))
}

// runAll runs every scenario on the cluster, adding to res.
func runAll(ctx context.Context, cfg Config, c *cluster.Cluster, binary, profileDir string, res *Results) error {
	logf := cfg.Logf
	f, err := framework.New(c, cfg.RepoDir)
	if err != nil {
		return err
	}
	rc := rest.CopyConfig(f.Config)
	rc.QPS, rc.Burst = benchQPS, 2*benchQPS
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	if err := checkFakeNodes(ctx, cs, cfg); err != nil {
		return err
	}
	if err := installClasses(ctx, f, cs); err != nil {
		return err
	}
	sv := &stickyvolContender{f: f, binary: binary, profileDir: profileDir}
	// The baseline first in every round, then stickyvol: on a machine
	// shared with other work, runs side by side see the same conditions.
	contenders := []contender{&instantContender{f: f, command: cfg.InstantCommand}, sv}
	for _, n := range cfg.Claims {
		for run := 1; run <= cfg.Runs; run++ {
			for _, ct := range contenders {
				r, err := runScenario(ctx, cs, ct, n, run, logf)
				if err != nil {
					return err
				}
				res.Runs = append(res.Runs, r)
			}
		}
	}
	if cfg.SkipMemory {
		return nil
	}
	res.Memory, err = runMemory(ctx, cs, sv, cfg.Objects, logf)
	return err
}

// startCluster brings up a cluster of cfg.FakeNodes kwok nodes and no real
// node, or attaches to the running one.
func startCluster(ctx context.Context, cfg Config) (*cluster.Cluster, error) {
	if cfg.Attach {
		c, err := cluster.Load(cluster.ClusterDir(cfg.CacheDir))
		if err == nil {
			c.SetOutput(cfg.ClusterOut)
			cfg.Logf("attached to the running cluster in %s", c.Dir())
		}
		return c, err
	}
	cfg.Logf("bringing up the local cluster: %d kwok nodes with room for %d pods each, no real node", cfg.FakeNodes, podsPerFakeNode(cfg.Claims))
	return cluster.Up(ctx, cluster.Config{
		CacheDir: cfg.CacheDir, Nodes: cluster.NoRealNodes, FakeNodes: cfg.FakeNodes,
		FakeNodePods: podsPerFakeNode(cfg.Claims), Out: cfg.ClusterOut,
	})
}

// checkFakeNodes makes sure the cluster has the kwok nodes the run needs:
// an attached cluster may have been started with other counts.
func checkFakeNodes(ctx context.Context, cs kubernetes.Interface, cfg Config) error {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: framework.FakeNodeLabel + "=kwok"})
	if err != nil {
		return err
	}
	room := int64(0)
	for _, n := range nodes.Items {
		room += n.Status.Allocatable.Pods().Value()
	}
	if len(nodes.Items) != cfg.FakeNodes || room < int64(slices.Max(cfg.Claims)) {
		return fmt.Errorf("the cluster has %d kwok nodes with room for %d pods, want %d with room for %d: "+
			"localcluster up --nodes 0 --fake-nodes %d --fake-node-pods %d", len(nodes.Items), room,
			cfg.FakeNodes, slices.Max(cfg.Claims), cfg.FakeNodes, podsPerFakeNode(cfg.Claims))
	}
	return nil
}

// installClasses makes what provisioning needs besides the provisioners:
// stickyvol's namespace (where the agents publish their CSIStorageCapacity
// objects), CSIDriver and StorageClass as deploy/base has them (no
// DaemonSet: the agents run as host processes), and a class and CSIDriver
// of the same settings for the instant provisioner, except that it
// publishes no capacity: with storageCapacity on, the scheduler would place
// none of its pods.
func installClasses(ctx context.Context, f *framework.Framework, cs kubernetes.Interface) error {
	for _, file := range []string{"deploy/base/namespace.yaml", "deploy/base/csidriver.yaml", "deploy/base/storageclass.yaml"} {
		if _, err := f.ApplyFile(ctx, "", file); err != nil {
			return err
		}
	}
	class, err := cs.StorageV1().StorageClasses().Get(ctx, framework.StorageClass, metav1.GetOptions{})
	if err != nil {
		return err
	}
	driver, err := cs.StorageV1().CSIDrivers().Get(ctx, framework.DriverName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	instantClass := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: InstantStorageClass},
		Provisioner:       InstantDriver,
		ReclaimPolicy:     ptr.To(v1.PersistentVolumeReclaimDelete),
		VolumeBindingMode: class.VolumeBindingMode,
	}
	instantDriver := &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: InstantDriver}, Spec: *driver.Spec.DeepCopy()}
	instantDriver.Spec.StorageCapacity = ptr.To(false)
	if _, err := cs.StorageV1().StorageClasses().Create(ctx, instantClass, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.StorageV1().CSIDrivers().Create(ctx, instantDriver, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// outputDir makes the directory of this run's results: cfg.OutDir, or
// CacheDir/bench/<time> with the link CacheDir/bench/latest to it.
func outputDir(cfg Config, started time.Time) (string, error) {
	if cfg.OutDir != "" {
		return cfg.OutDir, os.MkdirAll(cfg.OutDir, 0o755)
	}
	base := filepath.Join(cfg.CacheDir, "bench")
	name := started.Format("20060102-150405")
	if err := os.MkdirAll(filepath.Join(base, name), 0o755); err != nil {
		return "", err
	}
	latest := filepath.Join(base, "latest")
	if err := os.Remove(latest); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return filepath.Join(base, name), os.Symlink(name, latest)
}

// finish computes the figures and writes results.json, chart.png and the
// table with the summary line.
func finish(cfg Config, res *Results, outDir string) error {
	res.Summarize()
	var errs []error
	jsonPath := filepath.Join(outDir, "results.json")
	errs = append(errs, res.WriteJSON(jsonPath))
	chartPath := filepath.Join(outDir, "chart.png")
	if len(res.Figures) > 0 {
		errs = append(errs, WriteChart(chartPath, res))
	}
	cfg.Logf("results in %s and %s", jsonPath, chartPath)
	res.PrintTable(cfg.Out)
	return errors.Join(errs...)
}
