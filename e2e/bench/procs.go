package bench

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/stickyvol/stickyvol/internal/procfs"
)

// processes maps the name of each process of a provisioner (an agent's
// node, "instant") to its host PID.
type processes map[string]int

// cpu is the CPU time each process has used so far.
func (ps processes) cpu() (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	for name, pid := range ps {
		st, err := procfs.ReadStat(pid)
		if err != nil {
			return nil, fmt.Errorf("CPU time of %s: %w", name, err)
		}
		out[name] = st.CPU()
	}
	return out, nil
}

// totalCPU is the CPU time all the processes have used so far.
func (ps processes) totalCPU() (time.Duration, error) {
	each, err := ps.cpu()
	var total time.Duration
	for _, d := range each {
		total += d
	}
	return total, err
}

// rss is each process's RSS in MiB: now, or its peak since it started
// (VmHWM).
func (ps processes) rss(peak bool) (map[string]float64, error) {
	out := map[string]float64{}
	for name, pid := range ps {
		st, err := procfs.ReadStatus(pid)
		if err != nil {
			return nil, fmt.Errorf("memory of %s: %w", name, err)
		}
		out[name] = mib(st.RSS)
		if peak {
			out[name] = mib(st.PeakRSS)
		}
	}
	return out, nil
}

// Quiet is how the bench tells that processes have caught up with the
// cluster (informers synced, watch events handled): none of them used more
// than quietCPU of CPU time in the last quietWindow.
const (
	quietWindow = 2 * time.Second
	quietCPU    = 40 * time.Millisecond
)

// waitQuiet waits until every process has been quiet for a whole window,
// at most timeout. It says whether they fell quiet; a timeout is not an
// error, since a reading taken then is still worth reporting as such.
func (ps processes) waitQuiet(ctx context.Context, timeout time.Duration) (bool, error) {
	last, err := ps.cpu()
	if err != nil {
		return false, err
	}
	err = wait.PollUntilContextTimeout(ctx, quietWindow, timeout, false, func(context.Context) (bool, error) {
		now, err := ps.cpu()
		if err != nil {
			return false, err
		}
		quiet := true
		for name, cpu := range now {
			if cpu-last[name] > quietCPU {
				quiet = false
			}
		}
		last = now
		return quiet, nil
	})
	if wait.Interrupted(err) && ctx.Err() == nil {
		return false, nil
	}
	return err == nil, err
}
