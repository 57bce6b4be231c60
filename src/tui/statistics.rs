pub fn open(_siv: &mut cursive::Cursive) {}
