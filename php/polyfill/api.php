<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// The API's classes, as php-stubs/joinblock.stub.php declares them.

declare(strict_types=1);

namespace JoinBlock;

/** A lock could not be taken or released. */
class LockException extends \RuntimeException {}

/** The lock was not free before the timeout. */
class LockTimeoutException extends LockException {}

/** Action Network's answer could not be had; the message says why and never holds the key. */
class ActionNetworkException extends \RuntimeException {}

/** A held lock. Freeing it (unset, end of scope or request, exit, fatal error) releases it. */
final class Lock implements \Serializable
{
    /** Always throws: locks come from joinblock_acquire_lock(). */
    public function __construct()
    {
        throw Polyfill\Api::raised(new \Exception('You cannot instantiate this class from PHP.'), __FUNCTION__, self::class);
    }

    public function path(): string
    {
        return Polyfill\Locking::of($this)->path();
    }

    public function isHeld(): bool
    {
        return Polyfill\Locking::of($this)->isHeld();
    }

    public function release(): void
    {
        try {
            Polyfill\Locking::of($this)->release();
        } catch (LockException $e) {
            throw Polyfill\Api::raised($e, __FUNCTION__, self::class);
        }
    }

    // The extension gets what follows from its object handlers, which PHP code cannot
    // set: these magic methods stand in for them (the API comparison leaves them out).

    public function __destruct()
    {
        try {
            Polyfill\Locking::of($this)?->release();
        } catch (LockException) {
            // Nobody is left to tell when PHP frees the lock; the extension drops it too.
        }
    }

    public function __clone()
    {
        throw new \Error('Trying to clone an uncloneable object of class ' . self::class);
    }

    public function __serialize(): array
    {
        throw new \Exception("Serialization of 'JoinBlock\\Lock' is not allowed");
    }

    public function __unserialize(array $data): void
    {
        throw new \Exception("Unserialization of 'JoinBlock\\Lock' is not allowed");
    }

    // \Serializable only so that the old `C:` form reaches a method that refuses it:
    // without one, unserialize() makes a Lock that fails on every call. __serialize()
    // takes precedence over serialize() in every PHP this file runs on.

    public function serialize(): never
    {
        $this->__serialize();
    }

    public function unserialize(string $data): never
    {
        $this->__unserialize([]);
    }
}
