package cluster

import (
	"bufio"
	"bytes"
	"context"
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
	// nsOf, when not zero, is a PID whose mount namespace the process
	// starts in (through nsenter).
	nsOf int
	// newMountNS starts the process in a new, private mount namespace.
	newMountNS bool
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
	if spec.nsOf != 0 {
		argv = append([]string{"nsenter", "-t", strconv.Itoa(spec.nsOf), "-m", "--"}, argv...)
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
	if spec.newMountNS {
		// Go's runtime remounts / as MS_REC|MS_PRIVATE in the child right
		// after unshare(CLONE_NEWNS) (syscall/exec_linux.go), which is what
		// `unshare --mount --propagation private` does: mounts made in the
		// new namespace never propagate back to the host.
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
	logger.V(2).Info("Started", "component", spec.name, "pid", p.PID)
	return p, c.update(func(st *state) { st.Procs[spec.name] = p })
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

// statFields returns the fields of /proc/<pid>/stat after the command name,
// which may itself hold spaces and parentheses.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	// Fields from 3 (state) on; starttime is field 22.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return f, nil
}

func startTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// alive reports whether p still runs: same PID, same start time, not a
// zombie.
func (p proc) alive() bool {
	if p.PID <= 0 {
		return false
	}
	f, err := statFields(p.PID)
	if err != nil {
		return false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return err == nil && st == p.StartTime && f[0] != "Z"
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
	logger := klog.FromContext(ctx)
	live := map[string]proc{}
	for name, p := range procs {
		if p.alive() {
			p.signal(syscall.SIGTERM)
			live[name] = p
		}
	}
	deadline := time.Now().Add(grace)
	killed := false
	for len(live) > 0 {
		for name, p := range live {
			if !p.alive() {
				delete(live, name)
			}
		}
		if len(live) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if killed {
				var names []string
				for name, p := range live {
					names = append(names, fmt.Sprintf("%s (pid %d)", name, p.PID))
				}
				sort.Strings(names)
				return fmt.Errorf("still running after SIGKILL: %s", strings.Join(names, ", "))
			}
			for name, p := range live {
				logger.V(2).Info("Did not stop in time, killing", "component", name, "pid", p.PID, "grace", grace)
				p.signal(syscall.SIGKILL)
			}
			killed, deadline = true, time.Now().Add(10*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
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
