package driver

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FuzzValidateVolumeID checks the one promise the ID pattern makes: an
// accepted ID, joined under volumes/ or meta/, names an entry directly in
// that directory, never a path elsewhere (and never a temporary record).
func FuzzValidateVolumeID(f *testing.F) {
	for _, seed := range []string{
		"pvc-0b6c6a4e-2f1d-4c55-9d7e-6d1f0f4d8a11", "sanity-controller-create-8BD408ED-821A4051",
		"", ".", "..", "../x", "a/../../b", "a/b", "/etc/passwd", ".tmp-vol", "vol\x00", `..\x`,
		"vol.json", "a..b", strings.Repeat("a", 128), strings.Repeat("a", 129), "ＡＢ", "vol\n",
	} {
		f.Add(seed)
	}
	const root = "/var/lib/stickyvol"
	f.Fuzz(func(t *testing.T, id string) {
		err := validateVolumeID(id, "volume ID")
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refused %q with %v, want InvalidArgument", id, err)
			}
			return
		}
		if !filepath.IsLocal(id) || strings.HasPrefix(id, ".") || len(id) > MaxVolumeIDLength {
			t.Fatalf("accepted %q", id)
		}
		for _, dir := range []string{volumesDir, metaDir} {
			parent := filepath.Join(root, dir)
			for _, name := range []string{id, id + recordExt} {
				p := filepath.Join(parent, name)
				if filepath.Dir(p) != parent || filepath.Base(p) != name {
					t.Fatalf("accepted %q, which joins to %s, outside %s", id, p, parent)
				}
			}
		}
	})
}

// FuzzParameters checks that parameter parsing only accepts known keys and
// metadata, and only plain permission bits for directoryMode.
func FuzzParameters(f *testing.F) {
	for _, seed := range [][2]string{
		{ParamDirectoryMode, "0777"}, {ParamDirectoryMode, "4777"}, {ParamDirectoryMode, "0o755"},
		{ParamDirectoryMode, "-1"}, {ParamDirectoryMode, "1777"}, {ParamDirectoryMode, "0000000000777"},
		{"csi.storage.k8s.io/pvc/name", "../x"}, {"csi.storage.k8s.io", "x"}, {"DirectoryMode", "0777"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, key, value string) {
		p, err := parseParameters(map[string]string{key: value})
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refused %q=%q with %v, want InvalidArgument", key, value, err)
			}
			return
		}
		if key != ParamDirectoryMode && !strings.HasPrefix(key, metadataPrefix) {
			t.Fatalf("accepted unknown key %q", key)
		}
		if p.DirectoryMode&^0o777 != 0 {
			t.Fatalf("accepted directoryMode %q as %v", value, p.DirectoryMode)
		}
	})
}

// FuzzValidateTargetPath checks that an accepted target path is absolute,
// clean and neither inside nor above the data root.
func FuzzValidateTargetPath(f *testing.F) {
	for _, seed := range []string{
		"/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pv/mount", "/", "", "relative",
		"/var/lib/stickyvol", "/var/lib/stickyvol/volumes/x", "/var/lib/stickyvol2", "/var/lib",
		"/a/../var/lib/stickyvol", "/a//b", "/a/./b", "/a/b/",
	} {
		f.Add(seed)
	}
	const root = "/var/lib/stickyvol"
	f.Fuzz(func(t *testing.T, target string) {
		if validateTargetPath(target, root) != nil {
			return
		}
		if !filepath.IsAbs(target) || filepath.Clean(target) != target || target == "/" {
			t.Fatalf("accepted %q", target)
		}
		rel, err := filepath.Rel(root, target)
		if err == nil && filepath.IsLocal(rel) {
			t.Fatalf("accepted %q inside the data root", target)
		}
		if rel, err := filepath.Rel(target, root); err == nil && filepath.IsLocal(rel) {
			t.Fatalf("accepted %q, which contains the data root", target)
		}
	})
}
