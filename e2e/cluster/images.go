package cluster

import (
	"context"
	"fmt"
	"path/filepath"

	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"
)

// importImages imports OCI tarballs into a node's containerd, in the k8s.io
// namespace the CRI uses.
func (c *Cluster) importImages(ctx context.Context, name string, tarballs []string) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, tarball := range tarballs {
		g.Go(func() error {
			_, err := run(ctx, c.tools.ctr, "--address", c.containerdSocket(name), "--namespace", "k8s.io",
				"images", "import", tarball)
			if err != nil {
				return fmt.Errorf("importing %s into %s: %w", tarball, name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// LoadImage imports an OCI image tarball into every node's containerd, so
// that pods asking for it with imagePullPolicy IfNotPresent (or Never) start
// without a registry. A tag "latest" or no tag makes kubelet default the
// policy to Always: give such images another tag.
func (c *Cluster) LoadImage(ctx context.Context, ociTarball string) error {
	abs, err := filepath.Abs(ociTarball)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range c.Nodes() {
		g.Go(func() error { return c.importImages(gctx, n.Name, []string{abs}) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("Loaded image", "tarball", abs)
	return nil
}
