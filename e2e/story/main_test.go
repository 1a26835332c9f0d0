//go:build e2e

// The suite brings up the local cluster, builds and loads the images,
// deploys stickyvol from deploy/overlays/local (plus --capacity, see
// nodeCapacity), runs every scenario, and tears the cluster down, also when
// a scenario fails. It needs root.
//
//	go test -tags e2e -v ./e2e/story/                  # whole suite, own cluster
//	make cluster-up                                    # or: iterate on a running cluster
//	STICKYVOL_E2E_ATTACH=1 go test -tags e2e -v -run TestCapacity ./e2e/story/
//
// With STICKYVOL_E2E_ATTACH set, the suite uses the cluster running from the
// cache directory, (re)deploys stickyvol there from freshly built images, and
// leaves the cluster up.
package story

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// envAttach names the environment variable that makes the suite use the
// running cluster instead of bringing up its own.
const envAttach = "STICKYVOL_E2E_ATTACH"

// envInstall names the environment variable that says how the suite
// installs stickyvol: "kustomize" (the default: deploy/overlays/local, the
// kind overlay plus an affinity) or "helm" (the chart, with the same
// settings through its values, then `helm uninstall` and a check of what it
// left behind). `make e2e` runs the suite both ways.
const envInstall = "STICKYVOL_E2E_INSTALL"

// nodeCapacity is what every node's agent may hand out (--capacity), so that
// TestCapacity knows each node's room. The default, the free space of the
// data root's file system, is the same host disk for both nodes here.
const nodeCapacity = "1Gi"

// fakeNodes is how many kwok nodes the cluster gets for the chaos
// scenarios' volumes at scale (110 pods each).
const fakeNodes = 4

// suite is what TestMain set up for the scenarios.
var suite struct {
	f        *framework.Framework
	setupErr error

	// cacheDir holds the cluster and the binaries BuildImages built.
	cacheDir string

	mu    sync.Mutex
	times []scenarioTime
	chaos []chaosRow
}

type scenarioTime struct {
	name   string
	took   time.Duration
	failed bool
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Every scenario skips (or, with CI=true, fails) and says why.
		return m.Run()
	}
	start := time.Now()
	ctx := klog.NewContext(context.Background(), klog.Background())
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[suite %5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	attach := os.Getenv(envAttach) != ""
	cacheDir := cluster.DefaultCacheDir()
	suite.cacheDir = cacheDir

	install := os.Getenv(envInstall)
	helm, helmBinary := install == "helm", ""
	repo, err := framework.RepoDir(".")
	if err == nil && install != "" && install != "kustomize" && !helm {
		err = fmt.Errorf("%s=%q: want kustomize or helm", envInstall, install)
	}
	if err == nil && helm {
		// Before the cluster: the first build takes minutes.
		helmBinary, err = framework.EnsureHelm(ctx, cacheDir, repo, os.Stderr)
	}
	if err == nil {
		how := "kustomize " + framework.LocalOverlay
		if helm {
			how = "helm install " + framework.HelmChart
		}
		logf("installing stickyvol with %s", how)
		suite.f, err = framework.Setup(ctx, framework.SetupConfig{
			RepoDir:    repo,
			CacheDir:   cacheDir,
			Attach:     attach,
			AgentArgs:  []string{"--capacity=" + nodeCapacity},
			FakeNodes:  fakeNodes,
			Helm:       helm,
			HelmBinary: helmBinary,
			ClusterOut: os.Stderr,
			Logf:       logf,
		})
	}
	if err != nil {
		suite.setupErr = err
		logf("setup failed: %v", err)
		if suite.f != nil {
			suite.f.Dump(ctx, os.Stderr)
		}
	}
	setupTime := time.Since(start)

	code := m.Run()

	printTimes(setupTime)
	printChaos()
	if helm && suite.setupErr == nil {
		if err := uninstall(ctx, helmBinary, logf); err != nil {
			logf("helm uninstall: %v", err)
			code = 1
		}
	}
	if !attach {
		down := time.Now()
		// Also after a failed setup: Up may have left a cluster running
		// for the dump above.
		if err := cluster.DownDir(ctx, cluster.ClusterDir(cacheDir), os.Stderr); err != nil {
			logf("tearing down the cluster: %v", err)
			code = 1
		}
		logf("cluster down in %s", time.Since(down).Round(100*time.Millisecond))
	}
	logf("suite total %s", time.Since(start).Round(100*time.Millisecond))
	return code
}

// uninstall runs `helm uninstall` once the scenarios have deleted their
// claims, and fails if it left anything of stickyvol behind beyond what the
// README says it keeps.
func uninstall(ctx context.Context, helmBinary string, logf func(string, ...any)) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	left, err := suite.f.HelmUninstall(ctx, helmBinary)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	logf("helm uninstall left nothing behind (in %s)", time.Since(start).Round(100*time.Millisecond))
	return nil
}

func recordTime(name string, took time.Duration, failed bool) {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	suite.times = append(suite.times, scenarioTime{name, took, failed})
}

// printTimes prints the run time of setup and of each scenario.
func printTimes(setup time.Duration) {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	if len(suite.times) == 0 {
		return
	}
	tw := tabwriter.NewWriter(os.Stderr, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tTIME\tRESULT")
	fmt.Fprintf(tw, "setup (cluster, images, deploy)\t%s\t\n", setup.Round(100*time.Millisecond))
	var sum time.Duration
	for _, s := range suite.times {
		result := "ok"
		if s.failed {
			result = "FAIL"
		}
		sum += s.took
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.name, s.took.Round(100*time.Millisecond), result)
	}
	fmt.Fprintf(tw, "all scenarios\t%s\t\n", sum.Round(100*time.Millisecond))
	tw.Flush()
}
