// Command demo is `make demo`: it brings up the project's local two-node
// cluster (building and caching it on the first run), builds and loads the
// stickyvol and example images, deploys stickyvol from deploy/overlays/local,
// and walks through the StatefulSet story of deploy/examples/web.yaml:
// ordered pods with a volume each, a deleted pod that comes back with the
// same claim, node and data, a scale 3 -> 1 -> 3 that keeps the claims, and
// a snapshot of web-0's volume restored into a new claim
// (deploy/examples/snapshots/). It leaves the cluster running for a look around.
//
//	go run ./e2e/cmd/demo [--attach] [--cache-dir DIR]
//
// It needs root, as the local cluster does.
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

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

func main() {
	var o options
	flag.StringVar(&o.cacheDir, "cache-dir", cluster.DefaultCacheDir(), "`directory` of the cluster's binaries, the images and the cluster")
	flag.BoolVar(&o.attach, "attach", false, "use the cluster already running (make cluster-up) instead of bringing up a new one")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: demo [--attach] [--cache-dir DIR]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx = klog.NewContext(ctx, klog.Background())
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	cacheDir string
	attach   bool
}

// progress prints numbered steps with the time since the demo started and
// the time each step took.
type progress struct {
	out        io.Writer
	t0, stepT0 time.Time
	n, of      int
}

func (p *progress) elapsed() string { return fmt.Sprintf("[%6.1fs]", time.Since(p.t0).Seconds()) }

// step ends the current step and starts the next.
func (p *progress) step(format string, args ...any) {
	p.done()
	p.n++
	p.stepT0 = time.Now()
	fmt.Fprintf(p.out, "\n%s %d/%d %s\n", p.elapsed(), p.n, p.of, fmt.Sprintf(format, args...))
}

func (p *progress) done() {
	if p.n > 0 {
		fmt.Fprintf(p.out, "%s     done in %s\n", p.elapsed(), time.Since(p.stepT0).Round(100*time.Millisecond))
	}
}

// logf prints a detail line of the current step.
func (p *progress) logf(format string, args ...any) {
	fmt.Fprintf(p.out, "%s     %s\n", p.elapsed(), fmt.Sprintf(format, args...))
}

// blockIndent lines up a block of output under the text of logf's lines.
const blockIndent = "                 "

// block prints lines of command output under the current detail line.
func (p *progress) block(text string) {
	fmt.Fprintln(p.out, framework.Indent(text, blockIndent))
}

// indented writes what it is given indented under the current step; each
// Write must end with a newline (progress lines do).
type indented struct {
	w      io.Writer
	prefix string
}

func (iw indented) Write(b []byte) (int, error) {
	if _, err := io.WriteString(iw.w, framework.Indent(string(b), iw.prefix)+"\n"); err != nil {
		return 0, err
	}
	return len(b), nil
}

func run(ctx context.Context, o options, out io.Writer) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the local cluster needs root (mount namespaces, bridges, iptables): run it as root")
	}
	repo, err := framework.RepoDir(".")
	if err != nil {
		return err
	}
	p := &progress{out: out, t0: time.Now(), of: 6}
	fmt.Fprintln(out, "stickyvol demo: every pod of a StatefulSet gets its own volume on its node, and keeps it.")

	p.step("local cluster, images and stickyvol")
	f, err := framework.Setup(ctx, framework.SetupConfig{
		RepoDir:    repo,
		CacheDir:   o.cacheDir,
		Attach:     o.attach,
		ClusterOut: indented{out, blockIndent + "| "},
		Logf:       p.logf,
	})
	if err != nil {
		if f != nil {
			f.Dump(ctx, out)
			fmt.Fprintln(out, "The cluster is still up for a look; tear it down with: make cluster-down")
		}
		return err
	}
	d := &demo{f: f, p: p, out: out, notes: map[string]string{}, seenReady: map[types.UID]bool{}}
	if err := d.story(ctx); err != nil {
		f.Dump(ctx, out, demoNamespace)
		fmt.Fprintln(out, "The cluster is still up for a look; tear it down with: make cluster-down")
		return err
	}
	p.done()
	d.summary(time.Since(p.t0))
	return nil
}

// summary says what was shown and how to go on with the cluster.
func (d *demo) summary(took time.Duration) {
	fmt.Fprintf(d.out, `
Summary (%s):
  - %d pods of StatefulSet %s, each with its own claim data-%s-N and its own PV,
    a volume on the node the pod was scheduled to (on this cluster a btrfs
    subvolume whose size is a hard limit); the PV's node affinity names that node.
  - Pod %s-0 was deleted and came back with the same name, claim, PV, node and data.
  - Scaled to 1 and back to %d: the claims stayed Bound and the pods found their data.
  - A VolumeSnapshot of data-%s-0, taken on its node, restored into a new claim
    there: the restore holds the data of the snapshot's moment.

The cluster stays up so you can look around:
  eval "$(make -s cluster-env)"        # KUBECONFIG and PATH (kubectl) for this shell
  kubectl get pods,pvc,pv -o wide
  kubectl exec %s-0 -- cat /data/identity /data/starts
  kubectl stickyvol status -o wide      # the agent's binary as a kubectl plugin
  kubectl delete pod %s-1 && kubectl get pod %s-1 -o wide -w
  kubectl get volumesnapshot,volumesnapshotcontent

Tear it down with: make cluster-down
`, took.Round(time.Second), replicas, stsName, stsName, stsName, replicas, stsName, stsName,
		stsName, stsName)
}
