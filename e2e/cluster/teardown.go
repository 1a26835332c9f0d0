package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/stickyvol/stickyvol/internal/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// teardown stops everything the cluster in dir started and undoes its host
// changes, from the state file when there is one and, for what carries the
// cluster's names or marker, even without it. It goes on after an error and
// returns them all; the state file stays until a teardown succeeds, so a
// second one can finish the job. Logs are kept.
func teardown(ctx context.Context, dir string, out io.Writer) error {
	logger := klog.FromContext(ctx)
	st, err := readState(dir)
	known := err == nil
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(out, "ignoring unreadable state (%v); cleaning up by name only\n", err)
		}
		st = &state{Dir: dir, Procs: map[string]proc{}}
	}
	c := newCluster(dir, out)
	c.st = st
	c.tools, _ = findTools() // stopping needs none of them
	live := markedProcs(dir)
	if known || len(live) > 0 {
		c.step("tearing down the cluster in %s", dir)
	}

	var errs []error
	add := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	add("stopping add-ons", stopProcs(ctx, pick(st.Procs, "kube-proxy", "coredns", "kwok"), stopGrace))
	if _, ok := st.Procs["kube-proxy"]; ok {
		c.cleanupKubeProxy(ctx)
	}
	add("stopping nodes", c.stopNodes())
	add("stopping the control plane", stopProcs(ctx, pick(st.Procs, "kube-controller-manager", "snapshot-controller", "kube-scheduler", "kube-apiserver"), stopGrace))
	add("stopping etcd", stopProcs(ctx, pick(st.Procs, "etcd"), stopGrace))
	add("stopping leftover processes", stopProcs(ctx, markedProcs(dir), stopGrace))
	detachVolumeLoops(dir, out)
	add("unmounting", unmountUnder(dir))

	cgroups := ourCgroups(st.Cgroups)
	add("killing pods", killCgroups(cgroups))
	add("removing cgroups", removeCgroupTrees(cgroups))
	add("removing links", deleteLinks(ctx, st.Links))
	add("removing iptables rules", deleteRules(ctx, append(st.Rules, forwardRule)))
	if known {
		// Without the list of chains that were there before, there is no
		// telling kube-proxy's leftovers from another cluster's chains.
		add("removing kube-proxy's chains", removeKubeChains(ctx, st.KubeChains))
		add("restoring sysctls", restoreSysctls(st.Sysctls))
	}
	add("removing host mount points", removeHostDirs(ctx, st.HostDirs))
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := removeAllBut(dir, "logs", stateFile); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if known || len(live) > 0 {
		c.step("cluster down; logs kept in %s", filepath.Join(dir, "logs"))
	}
	logger.V(2).Info("Teardown done", "dir", dir)
	return nil
}

// pick returns the named processes of procs.
func pick(procs map[string]proc, names ...string) map[string]proc {
	out := map[string]proc{}
	for _, n := range names {
		if p, ok := procs[n]; ok {
			out[n] = p
		}
	}
	return out
}

// cleanupKubeProxy removes the iptables chains kube-proxy programmed.
// Failures only leave chains that removeKubeChains deletes next.
func (c *Cluster) cleanupKubeProxy(ctx context.Context) {
	bin := c.st.Binaries.KubeProxy
	if _, err := os.Stat(bin); err != nil {
		return
	}
	out, err := run(ctx, bin, "--cleanup", "--v=2")
	_ = os.WriteFile(c.logPath("kube-proxy-cleanup"), out, 0o644)
	if err != nil {
		klog.FromContext(ctx).V(2).Info("kube-proxy --cleanup failed", "err", err)
	}
}

// stopNodes stops every node at once.
func (c *Cluster) stopNodes() error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.st.Nodes))
	for i, n := range c.st.Nodes {
		wg.Go(func() { errs[i] = c.stopNode(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount of this mount namespace at or below dir,
// deepest first, detaching lazily what is busy. Node mounts live in the
// nodes' own namespaces and vanish with them; this catches the rest.
func unmountUnder(dir string) error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if m.MountPoint == dir || strings.HasPrefix(m.MountPoint, dir+"/") {
			points = append(points, m.MountPoint)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
			}
		}
	}
	return errors.Join(errs...)
}

// removeAllBut removes everything in dir except the named entries.
func removeAllBut(dir string, keep ...string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !slices.Contains(keep, e.Name()) {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
