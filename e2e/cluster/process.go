package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/procfs"
)

// markerEnv is set in the environment of every process the cluster starts,
// to the cluster directory. Children inherit it (nsenter, containerd's
// shims), so Down finds the cluster's processes even when the state file
// lost track of them.
const markerEnv = "STICKYVOL_CLUSTER_DIR"

// proc identifies a process the cluster started. StartTime (clock ticks
// since boot, field 22 of /proc/<pid>/stat) tells a live process from a
// new one that got the same PID after the first exited.
type proc struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
}

// procSpec describes a process to start.
type procSpec struct {
	// name is the component name: the state key and the log file name
	// ("node-1/kubelet" logs to logs/node-1-kubelet.log).
	name string
	argv []string
	// nodeInit, when not zero, is the host PID of a node's init (see
	// initName): the process starts in that node's mount and PID
	// namespaces.
	nodeInit int
	// newNode starts the process as PID 1 of a new PID namespace, in a new,
	// private mount namespace.
	newNode bool
}

// exitWatch reports the exit of a process this program started.
type exitWatch struct {
	done chan struct{}
	err  error
}

// children tracks the processes this program started, so that their exit is
// reaped (an unreaped child stays a zombie that kill(pid, 0) still finds)
// and so that waits fail fast when a component dies.
type children struct {
	mu     sync.Mutex
	byName map[string]*exitWatch
}

func (c *Cluster) logPath(name string) string {
	return filepath.Join(c.dir, "logs", strings.ReplaceAll(name, "/", "-")+".log")
}

// start starts a process in its own session, with its output appended to its
// log file, and records it in the state file. The process outlives this
// program: it is stopped by Down, never by a context.
func (c *Cluster) start(ctx context.Context, spec procSpec) (proc, error) {
	logger := klog.FromContext(ctx)
	argv := spec.argv
	if spec.nodeInit != 0 {
		argv = c.inNode(spec.nodeInit, argv)
	}
	logFile, err := os.OpenFile(c.logPath(spec.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return proc{}, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "=== %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), markerEnv+"="+c.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if spec.newNode {
		// clone(CLONE_NEWPID) makes the child PID 1 of a new PID namespace;
		// it then unshares its mount namespace, and Go's runtime remounts /
		// as MS_REC|MS_PRIVATE right after unshare(CLONE_NEWNS)
		// (syscall/exec_linux.go), which is what `unshare --mount
		// --propagation private` does: mounts made in the new namespace
		// never propagate back to the host.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	if err := cmd.Start(); err != nil {
		return proc{}, fmt.Errorf("starting %s: %w", spec.name, err)
	}
	p := proc{PID: cmd.Process.Pid}
	p.StartTime, err = startTime(p.PID)
	if err != nil {
		// The process died at once; its log says why.
		_ = cmd.Wait()
		return proc{}, fmt.Errorf("%s exited right after start", spec.name)
	}
	w := &exitWatch{done: make(chan struct{})}
	c.kids.mu.Lock()
	c.kids.byName[spec.name] = w
	c.kids.mu.Unlock()
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	if spec.nodeInit != 0 {
		// nsenter forks to enter the PID namespace and waits for its
		// child, whose exit status it then takes as its own: the exit
		// watch stays on nsenter, but the child is the process to record
		// and signal.
		if p, err = forkedChild(p); err != nil {
			return proc{}, fmt.Errorf("starting %s: nsenter %w", spec.name, err)
		}
	}
	logger.V(2).Info("Started", "component", spec.name, "pid", p.PID)
	return p, c.update(func(st *state) { st.Procs[spec.name] = p })
}

// inNode returns argv run through nsenter in the mount and PID namespaces of
// the node whose init has the host PID initPID. nsenter forks to enter the
// PID namespace.
func (c *Cluster) inNode(initPID int, argv []string) []string {
	return append([]string{c.tools.nsenter, "-t", strconv.Itoa(initPID), "-m", "-p", "--"}, argv...)
}

// forkedChild returns the child that nsenter, running as parent, forked into
// a node's PID namespace, by its host PID.
func forkedChild(parent proc) (proc, error) {
	children := fmt.Sprintf("/proc/%d/task/%d/children", parent.PID, parent.PID)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(children)
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, err := strconv.Atoi(f[0])
			if err != nil {
				return proc{}, fmt.Errorf("reading %s: %w", children, err)
			}
			if st, err := startTime(pid); err == nil {
				return proc{PID: pid, StartTime: st}, nil
			}
		}
		if !parent.alive() {
			return proc{}, errors.New("exited before its child could be found; its log says why")
		}
	}
	return proc{}, fmt.Errorf("(pid %d) forked no child in 5s", parent.PID)
}

// exited returns a non-nil error once the named process, started by this
// program, has exited.
func (c *Cluster) exited(name string) error {
	c.kids.mu.Lock()
	w := c.kids.byName[name]
	c.kids.mu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		if w.err == nil {
			return fmt.Errorf("%s exited", name)
		}
		return fmt.Errorf("%s exited: %w", name, w.err)
	default:
		return nil
	}
}

func startTime(pid int) (uint64, error) {
	st, err := procfs.ReadStat(pid)
	return st.StartTime, err
}

// alive reports whether p still runs: same PID, same start time, not a
// zombie.
func (p proc) alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := procfs.ReadStat(p.PID)
	return err == nil && st.StartTime == p.StartTime && st.State != "Z"
}

// signal sends sig to p's process group when p leads one (every process
// the cluster starts does, through setsid), else to p alone.
func (p proc) signal(sig syscall.Signal) {
	if pgid, err := syscall.Getpgid(p.PID); err == nil && pgid == p.PID {
		_ = syscall.Kill(-p.PID, sig)
		return
	}
	_ = syscall.Kill(p.PID, sig)
}

// stopProcs stops the given processes at once: SIGTERM, up to grace to exit,
// then SIGKILL. Processes already gone, or whose PID now belongs to another
// process, are left alone.
func stopProcs(ctx context.Context, procs map[string]proc, grace time.Duration) error {
	live := waitGone(signalLive(procs, syscall.SIGTERM), grace)
	if len(live) == 0 {
		return nil
	}
	logger := klog.FromContext(ctx)
	for name, p := range live {
		logger.V(2).Info("Did not stop in time, killing", "component", name, "pid", p.PID, "grace", grace)
	}
	return killProcs(live)
}

// killProcs sends SIGKILL to the given processes and waits for them to be
// gone. It is how a node's init is stopped: from outside its PID namespace,
// PID 1 of a namespace gets only the signals it has a handler for, and
// SIGKILL and SIGSTOP (pid_namespaces(7)).
func killProcs(procs map[string]proc) error {
	live := waitGone(signalLive(procs, syscall.SIGKILL), 10*time.Second)
	if len(live) == 0 {
		return nil
	}
	var names []string
	for name, p := range live {
		names = append(names, fmt.Sprintf("%s (pid %d)", name, p.PID))
	}
	sort.Strings(names)
	return fmt.Errorf("still running after SIGKILL: %s", strings.Join(names, ", "))
}

// signalLive sends sig to those of procs that are alive and returns them.
func signalLive(procs map[string]proc, sig syscall.Signal) map[string]proc {
	live := map[string]proc{}
	for name, p := range procs {
		if p.alive() {
			p.signal(sig)
			live[name] = p
		}
	}
	return live
}

// waitGone waits up to timeout for procs to exit and returns those still
// alive.
func waitGone(procs map[string]proc, timeout time.Duration) map[string]proc {
	deadline := time.Now().Add(timeout)
	for {
		for name, p := range procs {
			if !p.alive() {
				delete(procs, name)
			}
		}
		if len(procs) == 0 || time.Now().After(deadline) {
			return procs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// markedProcs lists the live processes whose environment carries this
// cluster's marker (see markerEnv), excluding this program.
func markedProcs(dir string) map[string]proc {
	want := []byte(markerEnv + "=" + dir + "\x00")
	found := map[string]proc{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), append([]byte{0}, want...)) {
			continue
		}
		st, err := startTime(pid)
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		found[fmt.Sprintf("%s[%d]", strings.TrimSpace(string(comm)), pid)] = proc{PID: pid, StartTime: st}
	}
	return found
}

// killAll sends SIGKILL to every PID in pids that still has the recorded
// start time.
func killAll(pids map[string]proc) {
	for _, p := range pids {
		if p.alive() {
			_ = unix.Kill(p.PID, unix.SIGKILL)
		}
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Component logs can be large; the last 64 KiB hold far more than n lines.
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		if _, err := f.Seek(-64<<10, io.SeekEnd); err != nil {
			return nil, err
		}
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines, sc.Err()
}

// PrintLogTails writes the last lines of every component's log to w: what to
// read when the cluster fails to come up or a test fails.
func (c *Cluster) PrintLogTails(w io.Writer, lines int) {
	paths, _ := filepath.Glob(filepath.Join(c.dir, "logs", "*.log"))
	sort.Strings(paths)
	for _, p := range paths {
		l, err := tail(p, lines)
		if err != nil || len(l) == 0 {
			continue
		}
		fmt.Fprintf(w, "==> %s <==\n%s\n", p, strings.Join(l, "\n"))
	}
}
