package cluster

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// StartProcess starts a host process that belongs to the cluster, such as a
// `stickyvol node` standing in for a kwok node's agent: its output goes to
// logs/<name>.log, Down stops it, and it is found by the cluster's marker
// should this program die first. argv[0] is run as it is.
func (c *Cluster) StartProcess(ctx context.Context, name string, argv []string) error {
	_, err := c.start(ctx, procSpec{name: name, argv: argv})
	return err
}

// KillProcess kills a process StartProcess started with SIGKILL, as a crash
// or the OOM killer would, and returns once it is gone.
func (c *Cluster) KillProcess(name string) error {
	c.mu.Lock()
	p, ok := c.st.Procs[name]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("no process %s in the cluster", name)
	}
	return killProcs(map[string]proc{name: p})
}

// ProcessRunning says whether the process recorded under name runs: the PID
// is alive and still the process that was started.
func (c *Cluster) ProcessRunning(name string) bool {
	c.mu.Lock()
	p, ok := c.st.Procs[name]
	c.mu.Unlock()
	return ok && p.alive()
}

// ProcessPID is the host PID of the process recorded under name, 0 if none.
func (c *Cluster) ProcessPID(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Procs[name].PID
}

// LogTail is the end of the log of the process recorded under name (its
// last lines), or what kept it from being read: for a failure message.
func (c *Cluster) LogTail(name string, lines int) string {
	l, err := tail(c.logPath(name), lines)
	if err != nil {
		return err.Error()
	}
	return strings.Join(l, "\n")
}

// RestartControlPlane stops kube-apiserver and etcd (SIGTERM, then SIGKILL
// after 10 s), starts them again on the same data and returns once the API
// server is ready. Everything else keeps running and must ride it out: its
// watches break, its requests fail for the seconds in between.
func (c *Cluster) RestartControlPlane(ctx context.Context) error {
	c.mu.Lock()
	procs := pick(c.st.Procs, "kube-apiserver", "etcd")
	c.mu.Unlock()
	if err := stopProcs(ctx, procs, 10*time.Second); err != nil {
		return fmt.Errorf("stopping the control plane: %w", err)
	}
	if err := c.startEtcd(ctx); err != nil {
		return err
	}
	if err := c.startAPIServer(ctx); err != nil {
		return err
	}
	if err := c.waitAPIServer(ctx); err != nil {
		c.PrintLogTails(c.out, 20)
		return fmt.Errorf("restarting the control plane: %w", err)
	}
	return nil
}
