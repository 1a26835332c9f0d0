package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// Cluster is a local cluster brought up by Up or found by Load.
type Cluster struct {
	dir   string
	out   io.Writer
	tools tools
	t0    time.Time
	kids  children

	mu sync.Mutex // guards st and writes of the state file
	st *state
}

// tools are the host programs the cluster runs, from the OS packages.
type tools struct {
	containerd, ctr, runc, nsenter, busybox, cniBinDir string
}

func findTools() (tools, error) {
	var t tools
	var missing []string
	for _, x := range []struct {
		dst  *string
		name string
	}{
		{&t.containerd, "containerd"}, {&t.ctr, "ctr"}, {&t.runc, "runc"}, {&t.nsenter, "nsenter"},
		{&t.busybox, "busybox"}, {new(string), "ip"}, {new(string), "iptables"}, {new(string), "iptables-save"},
		{new(string), "mount"},
	} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			missing = append(missing, x.name)
		}
		*x.dst = p
	}
	dir, err := CNIPluginDir()
	if err != nil {
		missing = append(missing, "CNI plugins")
	}
	t.cniBinDir = dir
	if len(missing) > 0 {
		return t, fmt.Errorf("missing on this machine: %v (EnsureOSPackages installs them)", missing)
	}
	return t, nil
}

func newCluster(dir string, out io.Writer) *Cluster {
	return &Cluster{dir: dir, out: out, t0: time.Now(), kids: children{byName: map[string]*exitWatch{}}}
}

// update changes the state under the lock and writes the state file.
func (c *Cluster) update(f func(*state)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.st)
	return c.st.write()
}

// step prints a progress line with the time since the cluster started.
func (c *Cluster) step(format string, args ...any) {
	fmt.Fprintf(c.out, "[%5.1fs] %s\n", time.Since(c.t0).Seconds(), fmt.Sprintf(format, args...))
}

// Up brings up a cluster. It first clears whatever an earlier cluster in the
// same cache directory left behind, running or not. When it fails it prints
// the tail of every component's log to cfg.Out and, unless cfg.Retain,
// tears down what it started.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the local cluster needs root (mount namespaces, bridges, iptables, cgroups)")
	}
	unlock, err := lockCluster(ctx, cfg.CacheDir, cfg.Out)
	if err != nil {
		return nil, err
	}
	defer unlock()
	dir := ClusterDir(cfg.CacheDir)
	if err := teardown(ctx, dir, cfg.Out); err != nil {
		return nil, fmt.Errorf("clearing what an earlier cluster left: %w", err)
	}
	if cfg.Binaries == nil || cfg.Images == nil {
		bins, images, err := Prepare(ctx, cfg.CacheDir, cfg.Out)
		if err != nil {
			return nil, err
		}
		if cfg.Binaries == nil {
			cfg.Binaries = bins
		}
		if cfg.Images == nil {
			cfg.Images = images
		}
	}
	c := newCluster(dir, cfg.Out)
	if err := c.up(ctx, cfg); err != nil {
		fmt.Fprintf(cfg.Out, "cluster did not come up: %v\n", err)
		c.PrintLogTails(cfg.Out, 20)
		if !cfg.Retain {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			if derr := teardown(dctx, dir, cfg.Out); derr != nil {
				err = errors.Join(err, fmt.Errorf("tearing down: %w", derr))
			}
		}
		return nil, err
	}
	return c, nil
}

// Load attaches to the cluster running from dir (ClusterDir of a cache
// directory): the e2e suite uses it to reach a cluster `localcluster up`
// started.
func Load(dir string) (*Cluster, error) {
	st, err := readState(dir)
	if err != nil {
		return nil, fmt.Errorf("no cluster in %s: %w", dir, err)
	}
	if !st.Procs["kube-apiserver"].alive() {
		return nil, fmt.Errorf("the cluster in %s is not running (no kube-apiserver); run up again", dir)
	}
	t, err := findTools()
	if err != nil {
		return nil, err
	}
	c := newCluster(dir, io.Discard)
	c.st, c.tools = st, t
	return c, nil
}

// SetOutput sets where progress and log tails go; Load starts with none.
func (c *Cluster) SetOutput(w io.Writer) { c.out = w }

// Dir returns the cluster directory.
func (c *Cluster) Dir() string { return c.dir }

// Down stops the cluster and undoes every change it made to the host. It is
// safe to call twice and after a crash; logs are kept in Dir()/logs.
func (c *Cluster) Down(ctx context.Context) error {
	unlock, err := lockCluster(ctx, filepath.Dir(c.dir), c.out)
	if err != nil {
		return err
	}
	defer unlock()
	return teardown(ctx, c.dir, c.out)
}

// DownDir tears down the cluster in dir, whatever state it is in.
func DownDir(ctx context.Context, dir string, out io.Writer) error {
	c := newCluster(dir, out)
	return c.Down(ctx)
}

// lockCluster takes an exclusive lock on the cluster of a cache directory for
// the time of an up or a down, so that two of them never interleave.
func lockCluster(ctx context.Context, cacheDir string, out io.Writer) (func(), error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	// Not the build lock: an up may build binaries while holding this one.
	f, err := os.OpenFile(filepath.Join(cacheDir, "cluster.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if !told {
			fmt.Fprintf(out, "waiting for another up or down of %s to finish\n", cacheDir)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct TCP ports free on this machine now.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		// Held open until all are chosen, so no port is handed out twice.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// poll calls cond every 100ms until it returns true, the timeout passes, or
// the named component (if any) exits.
func (c *Cluster) poll(ctx context.Context, component string, timeout time.Duration, cond wait.ConditionWithContextFunc) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if component != "" {
			if err := c.exited(component); err != nil {
				return false, err
			}
		}
		ok, err := cond(ctx)
		last = err
		return ok, nil
	})
	if err != nil && c.exited(component) == nil {
		if last != nil {
			return fmt.Errorf("waiting for %s: %w (last error: %w)", component, err, last)
		}
		return fmt.Errorf("waiting for %s: %w", component, err)
	}
	return err
}

// ComponentStatus is one process of the cluster.
type ComponentStatus struct {
	Name    string
	PID     int
	Running bool
}

// Status lists the cluster's processes and whether each is running.
func (c *Cluster) Status() []ComponentStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ComponentStatus
	for name, p := range c.st.Procs {
		out = append(out, ComponentStatus{Name: name, PID: p.PID, Running: p.alive()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// startAll starts the control plane, the nodes and the add-ons. Nodes start
// while the API server comes up; kubelets retry until it answers.
func (c *Cluster) startAll(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if err := c.startEtcd(ctx); err != nil {
		return err
	}
	if err := c.startAPIServer(ctx); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range c.st.Nodes {
		g.Go(func() error {
			if err := c.startNode(gctx, n); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
			c.step("%s: containerd and kubelet running", n.Name)
			return nil
		})
	}
	g.Go(func() error {
		if err := c.waitAPIServer(gctx); err != nil {
			return err
		}
		c.step("kube-apiserver ready at %s", c.apiServerURL())
		starts := []func(context.Context) error{c.startControllerManager, c.startScheduler}
		if c.hasKubeProxy() {
			starts = append(starts, c.startKubeProxy)
		}
		// Its CRDs take a second or two to be served: meanwhile the rest
		// starts.
		g.Go(func() error { return c.startSnapshotController(gctx) })
		for _, start := range append(starts, c.startCoreDNS) {
			if err := start(gctx); err != nil {
				return err
			}
		}
		if c.st.FakeNodes > 0 {
			if err := c.startKwok(gctx); err != nil {
				return err
			}
			return c.createFakeNodes(gctx)
		}
		return nil
	})
	err := g.Wait()
	logger.V(2).Info("Started all components", "err", err)
	return err
}
