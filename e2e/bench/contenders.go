package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// contender is a provisioner under test. Each run starts it afresh and
// stops it after, so that only one provisioner watches the cluster at a
// time and each run's peak RSS is its own.
type contender interface {
	name() string
	// storageClass is the class of its claims.
	storageClass() string
	// start starts its processes and returns them once they run.
	start(ctx context.Context) (processes, error)
	stop(ctx context.Context) error
	// leftovers lists what it left on disk once every PV is gone.
	leftovers() ([]string, error)
	// logTail is the end of its logs, for a failure message.
	logTail() string
}

// stickyvolContender is stickyvol as it runs on a node, with default flags:
// one `stickyvol node` host process per fake node (framework.HostAgents),
// each with a data root of its own.
type stickyvolContender struct {
	f      *framework.Framework
	binary string
	agents *framework.HostAgents
	// profileDir, when set, is where the next run's profiles go; the run
	// clears it (profile.go).
	profileDir string
}

func (s *stickyvolContender) name() string         { return Stickyvol }
func (s *stickyvolContender) storageClass() string { return framework.StorageClass }

func (s *stickyvolContender) start(ctx context.Context) (processes, error) {
	agents, err := s.f.StartHostAgents(ctx, s.binary)
	if err != nil {
		return nil, err
	}
	s.agents = agents
	if s.profileDir != "" {
		node := profiledNode(agents.Nodes())
		if err := agents.Kill(node); err != nil {
			return nil, err
		}
		if err := agents.StartWith(ctx, node, profileArgs()...); err != nil {
			return nil, err
		}
	}
	ps := processes{}
	for _, node := range agents.Nodes() {
		pid, running := agents.Running(node)
		if !running {
			return nil, fmt.Errorf("the agent of %s exited:\n%s", node, agents.LogTail(node, 10))
		}
		ps[node] = pid
	}
	return ps, nil
}

func (s *stickyvolContender) stop(ctx context.Context) error {
	if s.agents == nil {
		return nil
	}
	err := s.agents.Stop(ctx)
	s.agents = nil
	return err
}

// leftovers lists the volume directories left in the agents' data roots.
func (s *stickyvolContender) leftovers() ([]string, error) {
	if s.agents == nil {
		return nil, nil
	}
	var left []string
	for node, root := range s.agents.Roots {
		entries, err := os.ReadDir(filepath.Join(root, "volumes"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, e := range entries {
			left = append(left, node+": volumes/"+e.Name())
		}
	}
	return left, nil
}

func (s *stickyvolContender) logTail() string {
	if s.agents == nil {
		return ""
	}
	var b strings.Builder
	for _, node := range s.agents.Nodes() {
		fmt.Fprintf(&b, "==> agent of %s <==\n%s\n", node, s.agents.LogTail(node, 20))
	}
	return b.String()
}

// instantContender is the instant provisioner (RunInstant), run as a host
// process of the cluster so that its CPU time and memory are its own.
type instantContender struct {
	f *framework.Framework
	// command runs the instant provisioner; start adds its flags.
	command []string
}

const (
	// InstantStorageClass and InstantDriver are the instant provisioner's
	// class and driver name.
	InstantStorageClass = "bench-instant"
	InstantDriver       = "instant.bench.stickyvol.dev"
	// instantProcess is its name among the cluster's processes.
	instantProcess = "bench-instant"
)

func (p *instantContender) name() string         { return Instant }
func (p *instantContender) storageClass() string { return InstantStorageClass }

func (p *instantContender) readyFile() string {
	return filepath.Join(p.f.Cluster.Dir(), instantProcess+".ready")
}

func (p *instantContender) start(ctx context.Context) (processes, error) {
	ready := p.readyFile()
	if err := os.Remove(ready); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	argv := append(append([]string{}, p.command...),
		"--kubeconfig="+p.f.Cluster.Kubeconfig(),
		"--storage-class="+InstantStorageClass,
		"--driver="+InstantDriver,
		"--ready-file="+ready)
	if err := p.f.Cluster.StartProcess(ctx, instantProcess, argv); err != nil {
		return nil, err
	}
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		if !p.f.Cluster.ProcessRunning(instantProcess) {
			return false, fmt.Errorf("the instant provisioner exited:\n%s", p.logTail())
		}
		_, err := os.Stat(ready)
		return err == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("starting the instant provisioner: %w", err)
	}
	return processes{Instant: p.f.Cluster.ProcessPID(instantProcess)}, nil
}

func (p *instantContender) stop(context.Context) error {
	if !p.f.Cluster.ProcessRunning(instantProcess) {
		return nil
	}
	return p.f.Cluster.KillProcess(instantProcess)
}

func (p *instantContender) leftovers() ([]string, error) { return nil, nil }

func (p *instantContender) logTail() string { return p.f.Cluster.LogTail(instantProcess, 20) }
