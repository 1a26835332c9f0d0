package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/stickyvol/stickyvol/internal/mountinfo"
)

// dataRootSize is the size of each node's data root image. The file is
// sparse: it takes on the host's disk only what the volumes hold.
const dataRootSize = 8 << 30

// makeDataRoots gives each real node a btrfs file system of its own as
// /var/lib/stickyvol, so that its agent picks the btrfs backend (a subvolume
// per volume, its size enforced by a qgroup limit), as it would on a btrfs
// host: a sparse image under the node's directory, formatted and
// loop-mounted on the host before the node starts, then bound into the node
// like the plain directory it replaces. It stays mounted across node
// restarts, as a disk would. Teardown unmounts it with everything under the
// cluster directory; mount(8) attached the loop device with autoclear, so
// the device goes with the mount.
func (c *Cluster) makeDataRoots(ctx context.Context) error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	for _, n := range c.st.Nodes {
		dir := filepath.Join(c.nodeDir(n.Name), "stickyvol")
		if slices.ContainsFunc(mounts, func(m mountinfo.Mount) bool { return m.MountPoint == dir }) {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		img := filepath.Join(c.nodeDir(n.Name), "stickyvol.btrfs")
		f, err := os.Create(img)
		if err != nil {
			return err
		}
		err = f.Truncate(dataRootSize)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("data root image of %s: %w", n.Name, err)
		}
		if _, err := run(ctx, "mkfs.btrfs", "-q", img); err != nil {
			return fmt.Errorf("data root of %s: %w", n.Name, err)
		}
		if _, err := run(ctx, "mount", "-o", "loop", img, dir); err != nil {
			return fmt.Errorf("data root of %s: %w", n.Name, err)
		}
	}
	return nil
}
