package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stickyvol/stickyvol/internal/mountinfo"
	"golang.org/x/sys/unix"
)

const cgroupFS = "/sys/fs/cgroup"

// ourCgroup matches the names of the cgroup roots the cluster makes.
var ourCgroup = regexp.MustCompile(`^` + namePrefix + `node-[0-9]+$`)

// cgroupMount is one mounted cgroup hierarchy.
type cgroupMount struct {
	path string
	v2   bool
}

// cgroupV2 reports whether this machine runs the unified cgroup hierarchy
// only (cgroup2fs at /sys/fs/cgroup) rather than v1 hierarchies on a tmpfs.
func cgroupV2() (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupFS, &st); err != nil {
		return false, err
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// cgroupMounts lists the cgroup hierarchies mounted under /sys/fs/cgroup,
// from /proc/self/mountinfo.
func cgroupMounts() ([]cgroupMount, error) {
	all, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var mounts []cgroupMount
	for _, m := range all {
		if m.MountPoint != cgroupFS && !strings.HasPrefix(m.MountPoint, cgroupFS+"/") {
			continue
		}
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			mounts = append(mounts, cgroupMount{path: m.MountPoint, v2: m.FSType == "cgroup2"})
		}
	}
	return mounts, nil
}

// createCgroupRoot makes kubelet's cgroupRoot for a node. With cgroup v1,
// kubelet (cgroupfs driver) needs it in every v1 hierarchy, and a new cpuset
// cgroup is unusable until cpuset.cpus and cpuset.mems are copied from its
// parent. runc also creates cgroups under the hybrid "unified" hierarchy on
// its own; removeCgroups deletes those too. With cgroup v2 the directory is
// enough: runc's fs2 manager enables the controllers it needs in every
// ancestor's cgroup.subtree_control.
func (c *Cluster) createCgroupRoot(name string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	v2 := c.st.CgroupV2
	for _, m := range mounts {
		if m.v2 != v2 {
			continue // the hybrid "unified" hierarchy: runc's business
		}
		dir := filepath.Join(m.path, name)
		if err := c.update(func(st *state) { st.Cgroups = appendUnique(st.Cgroups, dir) }); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating cgroup: %w", err)
		}
		for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v2 {
				break
			}
			val, err := os.ReadFile(filepath.Join(m.path, file))
			if errors.Is(err, fs.ErrNotExist) {
				break // not the cpuset hierarchy
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, file), val, 0o644)
			}
			if err != nil {
				return fmt.Errorf("setting up cpuset cgroup %s: %w", dir, err)
			}
		}
	}
	return nil
}

// nodeCgroups returns the cgroup directories of a node root in every
// hierarchy (including the hybrid unified one) that exist now.
func nodeCgroups(root string) []string {
	mounts, _ := cgroupMounts()
	var dirs []string
	for _, m := range mounts {
		dir := filepath.Join(m.path, root)
		if _, err := os.Stat(dir); err == nil {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// ourCgroups returns every cgroup root directory named like the cluster's,
// in every hierarchy, plus the recorded ones that still exist.
func ourCgroups(recorded []string) []string {
	dirs := slices.Clone(recorded)
	mounts, _ := cgroupMounts()
	for _, m := range mounts {
		entries, _ := os.ReadDir(m.path)
		for _, e := range entries {
			if e.IsDir() && ourCgroup.MatchString(e.Name()) {
				dirs = appendUnique(dirs, filepath.Join(m.path, e.Name()))
			}
		}
	}
	return slices.DeleteFunc(dirs, func(d string) bool {
		_, err := os.Stat(d)
		return err != nil
	})
}

// cgroupProcs returns the processes in the cgroup trees rooted at dirs.
func cgroupProcs(dirs []string) map[string]proc {
	procs := map[string]proc{}
	for _, root := range dirs {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, s := range strings.Fields(string(b)) {
				pid, err := strconv.Atoi(s)
				if err != nil {
					continue
				}
				if st, err := startTime(pid); err == nil {
					procs[s] = proc{PID: pid, StartTime: st}
				}
			}
			return nil
		})
	}
	return procs
}

// killCgroups kills every process in the cgroup trees rooted at dirs (pod
// sandboxes and containers) until none is left.
func killCgroups(dirs []string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		procs := cgroupProcs(dirs)
		if len(procs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes still in cgroups %v", len(procs), dirs)
		}
		killAll(procs)
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroupTrees removes the cgroup trees rooted at dirs, deepest first.
// A cgroup directory can only be removed with rmdir, and only once empty.
func removeCgroupTrees(dirs []string) error {
	var errs []error
	for _, root := range dirs {
		var all []string
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, path)
			}
			return nil
		})
		slices.Reverse(all) // children after their parents in a walk
		for _, dir := range all {
			if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
			}
		}
	}
	return errors.Join(errs...)
}
