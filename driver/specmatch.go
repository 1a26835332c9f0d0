package driver

import "fmt"

// What a CreateVolume request must agree with: the volume of the same name
// that exists (a repeated request), and the backend that makes it, a
// clone or a restore taking its source's. The store (store.go) asks these
// before it makes anything.

// sameSource checks that a volume that exists was made from the content
// source the request names, or from none if it names none.
func sameSource(v Volume, spec volumeSpec) error {
	if v.ClonedFrom == spec.Source && v.RestoredFrom == spec.Snapshot {
		return nil
	}
	note := func(volume, snapshot string) string {
		switch {
		case volume != "":
			return "a clone of volume " + volume
		case snapshot != "":
			return "restored from snapshot " + snapshot
		}
		return "no content source"
	}
	return fmt.Errorf("%w: it is %s, the request asks for %s",
		errIncompatible, note(v.ClonedFrom, v.RestoredFrom), note(spec.Source, spec.Snapshot))
}

// clonerFor returns the backend that clones spec's source: the source's
// own.
func (s *store) clonerFor(spec volumeSpec) (backend, error) {
	if spec.source == nil {
		return nil, fmt.Errorf("%w: source volume %s was not looked up", errNotFound, spec.Source)
	}
	return backendThat[cloner](s, spec.source.Backend, "make clones")
}

// backendThat returns the store's backend of that name if it is a C (a
// cloner, a snapshotter), and otherwise says that it cannot do what.
func backendThat[C any](s *store, name, what string) (backend, error) {
	b, ok := s.backends[name]
	if _, can := b.(C); !ok || !can {
		return nil, fmt.Errorf("%w: the %s backend cannot %s", errUnsupported, name, what)
	}
	return b, nil
}

func compatible(v Volume, spec volumeSpec) error {
	if block := v.Backend == BackendBlock; block != spec.Params.Block {
		return fmt.Errorf("%w: it is %s, the request asks for %s", errIncompatible, blockNote(block), blockNote(spec.Params.Block))
	}
	if v.Ephemeral != spec.Ephemeral {
		return fmt.Errorf("%w: it is %s, the request asks for %s", errIncompatible, ephemeralNote(v.Ephemeral), ephemeralNote(spec.Ephemeral))
	}
	if !fitsRange(v.CapacityBytes, spec.Range) {
		return fmt.Errorf("%w: it has %d bytes, the request asks for required_bytes=%d, limit_bytes=%d",
			errIncompatible, v.CapacityBytes, spec.Range.GetRequiredBytes(), spec.Range.GetLimitBytes())
	}
	if image := v.Backend == BackendImage; image != spec.Params.Image || v.FsType != spec.Params.FsType {
		return fmt.Errorf("%w: it is a %s volume%s, the request asks for %s",
			errIncompatible, v.Backend, fsTypeNote(v.FsType), requestedType(spec.Params))
	}
	if pool := spec.Params.pool(); pool != v.Pool {
		return fmt.Errorf("%w: it is in pool %s, the request asks for %s=%s",
			errIncompatible, v.Pool, ParamPool, pool)
	}
	if mode := fmt.Sprintf("%04o", spec.Params.DirectoryMode); mode != v.DirectoryMode {
		return fmt.Errorf("%w: it has %s=%s, the request asks for %s",
			errIncompatible, ParamDirectoryMode, v.DirectoryMode, mode)
	}
	return nil
}

// backendFor returns the backend that makes a volume with parameters p:
// the block backend for a block volume, the image backend for volumeType
// image, else the pool's own.
func (s *store) backendFor(p volumeParams) (backend, error) {
	name := BackendImage
	switch {
	case p.Block:
		name = BackendBlock
	case !p.Image:
		return s.defaultBackend, nil
	}
	if b, ok := s.backends[name]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("%w: this data root has no %s backend", errUnsupported, name)
}

func fsTypeNote(fsType string) string {
	if fsType == "" {
		return ""
	}
	return " (" + fsType + ")"
}

func requestedType(p volumeParams) string {
	if p.Image {
		return fmt.Sprintf("%s=%s, %s=%s", ParamVolumeType, VolumeTypeImage, ParamFsType, p.FsType)
	}
	return "the pool's own backend (no " + ParamVolumeType + ")"
}
