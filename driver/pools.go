package driver

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"k8s.io/klog/v2"
)

// A pool is one data root with a store of its own (store.go): its own lock,
// identity, records, backends and capacity. Config.DataRoot is the pool
// named DefaultPool; Config.Pools adds others, so that classes can put
// their volumes on different disks (a fast NVMe, a big HDD) through the
// StorageClass parameter ParamPool.
//
// Volume IDs are unique across the pools of a driver: CreateVolume refuses
// an ID that another pool holds. So every call but CreateVolume finds the
// volume's pool from its ID alone (pools.of), and the CSI handlers stay as
// they were with one store: look the store up, then call it.

// DefaultPool is the name of the pool on Config.DataRoot, the one volumes
// go to when their class has no ParamPool.
const DefaultPool = "default"

// Pool is a data root besides Config.DataRoot.
type Pool struct {
	// Name is what ParamPool names; a DNS label (lower-case letters,
	// digits and '-', at most 63) other than DefaultPool.
	Name string
	// DataRoot is the pool's directory, as Config.DataRoot: absolute,
	// clean, and neither inside another pool's data root nor holding one.
	DataRoot string
	// Backend is what new volumes of this pool are made of, as
	// Config.Backend; "" means Config.Backend.
	Backend string
	// Capacity is the bytes this pool's volumes may reserve, as
	// Config.Capacity (which is the default pool's only): 0 means the free
	// space of DataRoot's file system at start plus what the pool's
	// volumes already reserve.
	Capacity int64
}

// poolNamePattern is a DNS label (RFC 1123), so a pool name reads the same
// in a flag, a StorageClass and a metric label.
var poolNamePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidatePoolName reports why name cannot name a pool, or nil.
func ValidatePoolName(name string) error {
	if !poolNamePattern.MatchString(name) {
		return fmt.Errorf("pool name %q is not valid: it must be 1-63 lower-case letters, digits or '-', "+
			"starting and ending with a letter or digit", name)
	}
	return nil
}

// ValidatePools checks the pools of a Config whose default pool is on
// dataRoot: valid and unique names, none DefaultPool; absolute, clean data
// roots other than /, none equal to, inside or holding another (two stores
// on one tree would count and clean up each other's files), valid backends
// and capacities.
func ValidatePools(dataRoot string, pools []Pool) error { return validatePools(dataRoot, pools, nil) }

// validatePools is ValidatePools with extra backends (tests) accepted.
func validatePools(dataRoot string, pools []Pool, extra []backend) error {
	var errs []error
	roots := map[string]string{DefaultPool: dataRoot}
	for _, p := range pools {
		if err := ValidatePoolName(p.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := roots[p.Name]; dup {
			errs = append(errs, fmt.Errorf("pool %q is given twice (%q is the data root's own)", p.Name, DefaultPool))
			continue
		}
		if !filepath.IsAbs(p.DataRoot) || filepath.Clean(p.DataRoot) != p.DataRoot || p.DataRoot == "/" {
			errs = append(errs, fmt.Errorf("pool %s: data root %q must be an absolute, clean path other than /", p.Name, p.DataRoot))
		}
		for _, other := range slices.Sorted(maps.Keys(roots)) {
			if PathsOverlap(p.DataRoot, roots[other]) {
				errs = append(errs, fmt.Errorf("pool %s: data root %s is, holds or is inside the data root %s of pool %s",
					p.Name, p.DataRoot, roots[other], other))
			}
		}
		roots[p.Name] = p.DataRoot
		if err := checkBackend(p.Backend, extra); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.Name, err))
		}
		if p.Capacity < 0 {
			errs = append(errs, fmt.Errorf("pool %s: capacity %d must not be negative", p.Name, p.Capacity))
		}
	}
	return errors.Join(errs...)
}

// PathsOverlap reports whether two clean absolute paths are the same or one
// is inside the other.
func PathsOverlap(a, b string) bool {
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/") || a == "/" || b == "/"
}

// pools are the stores of a driver, by pool name.
type pools struct {
	byName map[string]*store
	// names are the pool names, sorted.
	names []string
}

// openPools opens the store of every pool of cfg (checked by checkConfig);
// on an error, those already open are closed again.
func openPools(cfg Config) (*pools, error) {
	all := append([]Pool{{Name: DefaultPool, DataRoot: cfg.DataRoot, Backend: cfg.Backend, Capacity: cfg.Capacity}}, cfg.Pools...)
	p := &pools{byName: map[string]*store{}}
	for _, pool := range all {
		backend := pool.Backend
		if backend == "" {
			backend = cfg.Backend
		}
		logger := klog.LoggerWithValues(cfg.Logger, "pool", pool.Name)
		s, err := openStore(logger, storeConfig{
			Pool:     pool.Name,
			RootPath: pool.DataRoot,
			Holder:   "node " + cfg.NodeID,
			Capacity: pool.Capacity,
			Backend:  backend,
			Backends: cfg.backends,
		})
		if err != nil {
			_ = p.close()
			return nil, fmt.Errorf("pool %s: %w", pool.Name, err)
		}
		p.byName[pool.Name] = s
	}
	p.names = slices.Sorted(maps.Keys(p.byName))
	return p, nil
}

// all returns the stores in the order of their pool names.
func (p *pools) all() []*store {
	stores := make([]*store, 0, len(p.names))
	for _, name := range p.names {
		stores = append(stores, p.byName[name])
	}
	return stores
}

// named returns the store of a pool, or false when this driver has no pool
// of that name.
func (p *pools) named(name string) (*store, bool) {
	s, ok := p.byName[name]
	return s, ok
}

// holding returns the store that has a record of volume id in any state,
// or a set-aside one, or nil.
func (p *pools) holding(id string) *store {
	for _, s := range p.all() {
		if s.has(id) {
			return s
		}
	}
	return nil
}

// of returns the store of volume id: the one holding it, else the default
// pool's, which answers for an unknown volume as a single store would (not
// found, or nothing to delete).
func (p *pools) of(id string) *store {
	if s := p.holding(id); s != nil {
		return s
	}
	return p.byName[DefaultPool]
}

// list returns the ready volumes of all pools, sorted by ID.
func (p *pools) list() []Volume {
	var vols []Volume
	for _, s := range p.all() {
		vols = append(vols, s.list()...)
	}
	slices.SortFunc(vols, func(a, b Volume) int { return strings.Compare(a.ID, b.ID) })
	return vols
}

// check reports whether every data root can still be read.
func (p *pools) check() error {
	var errs []error
	for _, s := range p.all() {
		if err := s.check(); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", s.pool, err))
		}
	}
	return errors.Join(errs...)
}

// close releases every data root.
func (p *pools) close() error {
	var errs []error
	for _, s := range p.byName {
		errs = append(errs, s.close())
	}
	return errors.Join(errs...)
}
