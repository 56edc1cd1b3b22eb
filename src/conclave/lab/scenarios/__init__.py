"""The lab's scenarios, one module each."""
