// Package driver is stickyvol's CSI driver: node-local volumes under a data
// root, bind-mounted into pods.
//
// The driver serves the CSI Identity, Controller and Node services on one
// unix socket, each as its own type (identity.go, controller.go, node.go);
// server.go has the listener and the logging interceptor, validate.go the
// pure request checks, store.go the volume records and their crash-safe
// on-disk layout, backend.go what holds a volume's data (the backend each
// record names), mount.go the bind mounts.
//
// Behaviour, in short:
//   - A volume's ID is its CreateVolume name, checked against a strict
//     pattern (validate.go) before any path is built, so CreateVolume is
//     idempotent by name: the same name with a compatible capacity range
//     and parameters returns the existing volume, an incompatible one gets
//     AlreadyExists.
//   - Only single-node access modes are supported; MULTI_NODE_* is
//     InvalidArgument. The mount access type gets a directory (or a file
//     system of its own, backend.go), the block access type a loop device
//     over a sparse file (block.go).
//   - NodePublishVolume also makes CSI inline ephemeral volumes, which
//     NodeUnpublishVolume deletes again (ephemeral.go).
//   - Every volume reserves its size out of the node's capacity
//     (Config.Capacity); a volume that does not fit gets ResourceExhausted,
//     so the provisioner can reschedule the claim to another node. Whether
//     the size is also enforced depends on the volume's backend: a btrfs
//     subvolume's qgroup limit makes writes past it fail (EDQUOT); nothing
//     stops a pod from writing more than its size into a directory volume.
//   - ControllerExpandVolume raises a volume's size (and reservation);
//     sizes never shrink.
//   - CreateSnapshot keeps a copy of a volume at one moment, next to it
//     (a read-only btrfs snapshot, or a copy that reserves its size);
//     CreateVolume makes a volume from a snapshot or clones a volume, on
//     the source's node and backend (snapshot.go, clone.go).
//   - Every RPC on a volume takes that volume's lock; a second RPC on a
//     busy volume gets Aborted and the CO retries.
//   - Handlers return only gRPC status errors. Store errors are sentinels
//     mapped with errors.Is (see statusFor).
package driver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

const (
	// Name is the CSI driver name, also the provisioner name.
	Name = "hostpath.stickyvol.dev"
	// TopologyKey is the topology segment NodeGetInfo reports, with the
	// node ID as its value; PVs get node affinity on it.
	TopologyKey = "topology.hostpath.stickyvol.dev/node"
)

// Config configures a Driver.
type Config struct {
	// Name is the CSI driver name; empty means Name.
	Name string
	// Version is the vendor version GetPluginInfo reports; empty means "dev".
	Version string
	// NodeID identifies this node (the Kubernetes node name). Required; it
	// must be a valid label value (at most 63 characters) because it is the
	// value of TopologyKey.
	NodeID string
	// DataRoot is the absolute directory holding volumes/ and meta/,
	// e.g. /var/lib/stickyvol. Required; created if missing.
	DataRoot string
	// Backend is the backend new volumes get (see backend.go): BackendAuto
	// (the default, also meant by "": btrfs when DataRoot is on btrfs,
	// else directory), BackendDirectory or BackendBtrfs. New fails when
	// the btrfs backend is chosen, by name or by auto, and cannot work
	// (not btrfs, quotas cannot be turned on). Volumes keep the backend
	// they were made with, which their record names, so changing this
	// serves the existing volumes as before.
	Backend string
	// backends, set by tests, are offered besides the built-in ones.
	backends []backend
	// Capacity is the bytes volumes in DataRoot (the default pool) may
	// reserve; each of Pools has its own. 0 means the
	// free space of DataRoot's file system when New runs, plus what the
	// existing volumes already reserve (they were free when those volumes
	// were made). That figure moves as other users of the file system
	// write; set Capacity for a fixed one.
	Capacity int64
	// Pools are data roots besides DataRoot, which is the pool named
	// DefaultPool (pools.go); Backend applies to a pool without its own,
	// Capacity to DataRoot only.
	Pools []Pool
	// MaxVolumesPerNode is reported by NodeGetInfo; 0 means not reported
	// (unlimited).
	MaxVolumesPerNode int64
	// Endpoint is the unix socket Run listens on, "unix:///path" or "/path".
	Endpoint string
	// SocketGroup sets who may use the socket: -1 makes it mode 0600
	// (owner only); a group ID >= 0 makes it that group's, mode 0660.
	// The zero value is group 0 (root).
	SocketGroup int
	// Mounter makes the bind mounts; nil means real mounts (NewMounter).
	Mounter Mounter
	// Logger receives New's start-up messages (records cleaned up,
	// directories without a record). The zero value means klog.Background().
	// RPCs log to the logger in the context passed to Run or Serve.
	Logger klog.Logger
	// VolumesChanged, when set, is called after each CreateVolume,
	// ControllerExpandVolume and DeleteVolume that succeeded, so that
	// whoever publishes the node's free capacity can look again; less
	// says the room may have shrunk (a create or a growth), which the
	// scheduler should learn at once. It runs inside the RPC: it must not
	// block.
	VolumesChanged func(less bool)
}

// Driver is a CSI driver instance on its data roots (pools).
type Driver struct {
	cfg        Config
	pools      *pools
	identity   *identityServer
	controller *controllerServer
	node       *nodeServer
}

// New validates cfg, creates the data root if needed, reloads the volume
// records and cleans up work that a crash interrupted (see store.go).
// The returned Driver serves nothing until Run or Serve is called.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = Name
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.Mounter == nil {
		cfg.Mounter = NewMounter()
	}
	if cfg.Logger.GetSink() == nil {
		cfg.Logger = klog.Background()
	}
	if err := checkConfig(cfg); err != nil {
		return nil, err
	}
	p, err := openPools(cfg)
	if err != nil {
		return nil, err
	}
	locks := &volumeLocks{held: map[string]bool{}}
	d := &Driver{
		cfg:        cfg,
		pools:      p,
		identity:   &identityServer{name: cfg.Name, version: cfg.Version, pools: p},
		controller: &controllerServer{nodeID: cfg.NodeID, pools: p, locks: locks, mounter: cfg.Mounter, changed: cfg.VolumesChanged},
		node: &nodeServer{
			nodeID:     cfg.NodeID,
			maxVolumes: cfg.MaxVolumesPerNode,
			pools:      p,
			locks:      locks,
			mounter:    cfg.Mounter,
			changed:    cfg.VolumesChanged,
		},
	}
	d.node.sweepEphemeral(cfg.Logger)
	return d, nil
}

func checkConfig(cfg Config) error {
	var errs []error
	if err := validateNodeID(cfg.NodeID); err != nil {
		errs = append(errs, err)
	}
	if !filepath.IsAbs(cfg.DataRoot) || filepath.Clean(cfg.DataRoot) != cfg.DataRoot || cfg.DataRoot == "/" {
		errs = append(errs, fmt.Errorf("data root %q must be an absolute, clean path other than /", cfg.DataRoot))
	}
	if err := checkBackend(cfg.Backend, cfg.backends); err != nil {
		errs = append(errs, err)
	}
	if err := validatePools(cfg.DataRoot, cfg.Pools, cfg.backends); err != nil {
		errs = append(errs, err)
	}
	if cfg.Capacity < 0 {
		errs = append(errs, fmt.Errorf("capacity %d must not be negative", cfg.Capacity))
	}
	if cfg.MaxVolumesPerNode < 0 {
		errs = append(errs, fmt.Errorf("max volumes per node %d must not be negative", cfg.MaxVolumesPerNode))
	}
	if cfg.SocketGroup < -1 {
		errs = append(errs, fmt.Errorf("socket group %d must be -1 (owner only) or a group ID", cfg.SocketGroup))
	}
	if cfg.Endpoint != "" {
		if _, err := socketPath(cfg.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Capacity is the bytes volumes may reserve on this node in total, in all
// pools.
func (d *Driver) Capacity() int64 {
	var total int64
	for _, s := range d.pools.all() {
		c, _ := s.usage()
		total += c
	}
	return total
}

// Allocated is the bytes the volumes on this node reserve, in all pools
// (including volumes being created or deleted).
func (d *Driver) Allocated() int64 {
	var total int64
	for _, s := range d.pools.all() {
		_, a := s.usage()
		total += a
	}
	return total
}

// Backend is the name of the backend that makes new volumes in the default
// pool: what Config.Backend chose, with BackendAuto resolved. Each volume's
// own is in its record (Volume.Backend).
func (d *Driver) Backend() string { return d.pools.byName[DefaultPool].defaultBackend.Name() }

// Volumes returns the records of the node's volumes in all pools, sorted by
// ID.
func (d *Driver) Volumes() []Volume { return d.pools.list() }

// Unavailable returns the volumes this driver does not serve because their
// record was corrupt, by volume ID, with what to do about it; the reason
// names the pool for volumes outside the default one. Every RPC on them
// fails with FailedPrecondition and that text; their data is kept.
func (d *Driver) Unavailable() map[string]string {
	all := map[string]string{}
	for _, s := range d.pools.all() {
		for id, reason := range s.unavailableVolumes() {
			if s.pool != DefaultPool {
				reason = "in pool " + s.pool + ": " + reason
			}
			all[id] = reason
		}
	}
	return all
}

// Close releases the data roots. Call it after Run or Serve returned.
func (d *Driver) Close() error { return d.pools.close() }

// volumeLocks serializes the RPCs on one volume. A caller that finds the
// volume busy does not wait: it answers Aborted, which tells the CO that an
// operation on the volume is in progress and to retry later.
type volumeLocks struct {
	mu   sync.Mutex
	held map[string]bool
}

// lock takes the lock of volume id or returns an Aborted status.
func (l *volumeLocks) lock(id string) (unlock func(), err error) { return l.take(id, "volume "+id) }

// lockSnapshot takes the lock of snapshot id, which is not the lock of a
// volume of the same ID: the key has a '/', which no ID has.
func (l *volumeLocks) lockSnapshot(id string) (unlock func(), err error) {
	return l.take("snapshot/"+id, "snapshot "+id)
}

// take takes the lock key, or returns an Aborted status that names what.
func (l *volumeLocks) take(key, what string) (unlock func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[key] {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", what)
	}
	l.held[key] = true
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.held, key)
	}, nil
}

// statusFor maps an error from the store or the mounter to a status error.
// msg says what failed, e.g. "creating volume".
func statusFor(err error, msg string) error {
	code := codes.Internal
	switch {
	case errors.Is(err, errNotFound):
		code = codes.NotFound
	case errors.Is(err, errIncompatible):
		code = codes.AlreadyExists
	case errors.Is(err, errNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, errDeleting):
		code = codes.Aborted
	case errors.Is(err, errOrphanDir), errors.Is(err, errUnavailable), errors.Is(err, errUnsupported),
		errors.Is(err, errOfflineOnly):
		code = codes.FailedPrecondition
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Errorf(code, "%s: %v", msg, err)
}
