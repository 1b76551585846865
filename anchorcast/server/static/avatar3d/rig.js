// Loads the avatar (glb with ARKit-named morph targets, or VRM) and applies a frame's expression coefficients.
//
// glTF heads: each morph target is matched to a coefficient by its ARKit name, compared without case, prefixes
// ("head.jawOpen") or the side's spelling (ICT-FaceKit's "eyeBlink_L" is ARKit's "eyeBlinkLeft"); a target ARKit
// names once where the stream has two sides (browInnerUp, cheekPuff) takes their mean.
//
// VRM avatars: their preset expressions from the coefficients (clamped to 0..1):
//   aa <- jawOpen              ih <- mean(mouthSmile L, R)     ou <- mouthPucker
//   ee <- mean(mouthStretch L, R)                              oh <- mouthFunnel
//   blinkLeft <- eyeBlink L    blinkRight <- eyeBlink R
"use strict";

import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { VRMLoaderPlugin, VRMUtils } from "@pixiv/three-vrm";

export function canonical(name) {
  const last = String(name).split(/[.:|/]/).pop().toLowerCase();
  return last.replace(/_l$/, "left").replace(/_r$/, "right").replace(/[^a-z0-9]/g, "");
}

const VRM_MAP = {
  aa: ["jawopen"], ih: ["mouthsmileleft", "mouthsmileright"], ou: ["mouthpucker"],
  ee: ["mouthstretchleft", "mouthstretchright"], oh: ["mouthfunnel"],
  blinkLeft: ["eyeblinkleft"], blinkRight: ["eyeblinkright"],
};

export class Rig {
  constructor(scene) {
    this.scene = scene;
    this.root = null;
    this.vrm = null;
    this.bindings = [];  // glTF: {influences, slot, key}
    this.names = [];     // the stream's expression names, canonical
    this.sources = [];   // per binding or VRM expression: coefficient indices to average
  }

  async load(url) {
    const loader = new GLTFLoader();
    loader.register((parser) => new VRMLoaderPlugin(parser));
    const gltf = await loader.loadAsync(url);
    this.vrm = gltf.userData.vrm || null;
    if (this.vrm) {
      VRMUtils.rotateVRM0(this.vrm);  // VRM 0.x faces -z; VRM 1.0 and the camera expect +z
      this.root = this.vrm.scene;
    } else {
      this.root = gltf.scene;
      this.root.traverse((node) => {
        if (!node.isMesh || !node.morphTargetDictionary || !node.morphTargetInfluences) return;
        for (const [name, slot] of Object.entries(node.morphTargetDictionary)) {
          this.bindings.push({ influences: node.morphTargetInfluences, slot, key: canonical(name) });
        }
      });
    }
    this.scene.add(this.root);
    this.root.updateMatrixWorld(true);
    this._bind();
    return this;
  }

  /** The stream's expression names (its first message), in the order of each frame's weights. */
  setNames(names) {
    this.names = names.map(canonical);
    this._bind();
  }

  _indices(key) {
    const one = this.names.indexOf(key);
    if (one >= 0) return [one];
    const sides = [this.names.indexOf(`${key}left`), this.names.indexOf(`${key}right`)].filter((i) => i >= 0);
    return sides;
  }

  _bind() {
    if (!this.root || !this.names.length) return;
    if (this.vrm) {
      this.sources = Object.entries(VRM_MAP).map(([expression, keys]) =>
        [expression, keys.map((key) => this.names.indexOf(key)).filter((i) => i >= 0)]);
    } else {
      this.sources = this.bindings.map((binding) => this._indices(binding.key));
    }
  }

  get bound() {
    return this.sources.filter((entry) => (this.vrm ? entry[1] : entry).length > 0).length;
  }

  apply(weights) {
    const mean = (indices) => {
      let sum = 0;
      for (const i of indices) sum += weights[i];
      return indices.length ? Math.min(1, Math.max(0, sum / indices.length)) : 0;
    };
    if (this.vrm) {
      for (const [expression, indices] of this.sources) {
        if (indices.length) this.vrm.expressionManager?.setValue(expression, mean(indices));
      }
      return;
    }
    for (let b = 0; b < this.bindings.length; b += 1) {
      const indices = this.sources[b];
      if (indices && indices.length) this.bindings[b].influences[this.bindings[b].slot] = mean(indices);
    }
  }

  update(seconds) {
    if (this.vrm) this.vrm.update(seconds);
  }

  /** Where to look: the head's centre and height in world units (a VRM's head bone, else the model's box). */
  frame() {
    const head = this.vrm?.humanoid?.getNormalizedBoneNode("head");
    if (head) {
      const centre = new THREE.Vector3();
      head.getWorldPosition(centre);
      return { centre: centre.add(new THREE.Vector3(0, 0.06, 0)), height: 0.32 };
    }
    const box = new THREE.Box3().setFromObject(this.root);
    const size = box.getSize(new THREE.Vector3());
    return { centre: box.getCenter(new THREE.Vector3()), height: Math.max(size.y, size.x) };
  }

  /** The mouth's box in world space: the vertices jawOpen moves (glTF heads with that target), else null. */
  mouthBox() {
    const found = this.bindings.find((binding) => binding.key === "jawopen");
    if (!found) return null;
    let box = null;
    this.root.traverse((node) => {
      if (box || !node.isMesh || node.morphTargetInfluences !== found.influences) return;
      const base = node.geometry.attributes.position;
      const delta = node.geometry.morphAttributes.position?.[found.slot];
      if (!delta) return;
      let largest = 0;
      for (let i = 0; i < delta.count; i += 1) {
        largest = Math.max(largest, Math.hypot(delta.getX(i), delta.getY(i), delta.getZ(i)));
      }
      box = new THREE.Box3();
      const point = new THREE.Vector3();
      for (let i = 0; i < delta.count; i += 1) {
        if (Math.hypot(delta.getX(i), delta.getY(i), delta.getZ(i)) > 0.25 * largest) {
          box.expandByPoint(point.fromBufferAttribute(base, i).applyMatrix4(node.matrixWorld));
        }
      }
    });
    return box;
  }
}
